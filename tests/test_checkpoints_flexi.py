"""FlexiViT's patch-size change (load_pretrained(..., patch_size=P)): tokens kept on a resized input."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

from vitlab import create_model, load_pretrained
from vitlab.checkpoints import CheckpointError
from vitlab.checkpoints.adapt import resize_matrix, set_patch_size
from vitlab.checkpoints.export import export_checkpoint


def random_vit(patch=8):
    model = create_model("ViT-Ti/16", **tiny(patch_size=patch, image_size=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def resize_each_patch(x, old, new):
    """Every old x old patch resized to new x new on its own (the B of FlexiViT applied patch by patch)."""
    b, c, h, w = x.shape
    gh, gw = h // old, w // old
    patches = x.reshape(b, c, gh, old, gw, old).permute(0, 1, 2, 4, 3, 5).reshape(-1, 1, old, old)
    resized = F.interpolate(patches.double(), size=(new, new), mode="bilinear", align_corners=False).float()
    return resized.reshape(b, c, gh, gw, new, new).permute(0, 1, 2, 4, 3, 5).reshape(b, c, gh * new, gw * new)


def logit_error(model, method, new, x):
    resized = load_copy(model)
    set_patch_size(resized, new, method)
    with torch.no_grad():
        return (resized(resize_each_patch(x, 8, new)) - model(x)).abs().max().item()


def load_copy(model):
    copy = create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=32)).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def test_resize_matrix_is_the_bilinear_resize():
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    expected = F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False).reshape(3, 36)
    assert torch.allclose(x.reshape(3, 16) @ resize_matrix(4, 6).T, expected)


def test_load_pretrained_with_a_patch_size_keeps_the_tokens(tmp_path):
    model = random_vit()
    path = export_checkpoint(model, tmp_path / "m", "vitlab")
    resized = load_pretrained(path, patch_size=16)
    assert resized.config.patch_size == 16 and resized.config.image_size == 64
    assert resized.patch_embed.proj.weight.shape[-2:] == (16, 16)
    assert torch.equal(resized.pos_embed, model.pos_embed)  # the grid (4 x 4) is unchanged
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (resized(resize_each_patch(x, 8, 16)) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("new", [12, 16])
def test_pinv_resize_beats_plain_bilinear(new):
    model = random_vit()
    x = torch.randn(2, 3, 32, 32)
    pinv, bilinear = logit_error(model, "pinv", new, x), logit_error(model, "bilinear", new, x)
    assert pinv <= 1e-4 and bilinear > 100 * pinv


def test_a_hybrid_cannot_change_its_patch_size():
    model = create_model("R50+ViT-B/16", **tiny(image_size=32, resnet_layers=(1,), patch_size=1))
    with pytest.raises(CheckpointError, match="plain ViT"):
        set_patch_size(model, 2)
