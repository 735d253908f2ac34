"""The model of the paper: shapes, heads, attention, determinism, parity with Hugging Face's ViTModel."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vitlab
from vitlab.models import count_flops, count_parameters, list_models, model_config
from vitlab.models.vit import drop_patches, drop_path

from conftest import tiny

# timm's parameter counts for the same architectures with 1000 classes.
TIMM_PARAMS = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-B/16": 86_567_656,
    "ViT-L/16": 304_326_632,
    "ViT-H/14": 632_045_800,
    "R50+ViT-B/16": 98_659_112,
    "BiT-R50x1": 25_549_352,
}
# Table 1 of the paper, in millions.
PAPER_PARAMS_M = {"ViT-Ti/16": 5.7, "ViT-S/16": 22, "ViT-B/16": 86, "ViT-L/16": 307, "ViT-H/14": 632}


@pytest.mark.parametrize("name,expected", TIMM_PARAMS.items())
def test_parameter_counts_equal_timm(name, expected):
    assert count_parameters(name) == expected


@pytest.mark.parametrize("name,millions", PAPER_PARAMS_M.items())
def test_parameter_counts_round_to_table_1(name, millions):
    # ViT-L is 304M by the architecture; the paper's 307M is within 1%.
    assert count_parameters(name) / 1e6 == pytest.approx(millions, rel=0.012)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_name_counts_without_allocating(name):
    assert count_parameters(name) > 1_000_000


@pytest.mark.parametrize("name", list_models())
def test_every_registered_name_gives_logits(name):
    if name.startswith("BiT"):  # full size, on the meta device: shapes without memory or compute
        with torch.device("meta"):
            model = vitlab.create_model(name, num_classes=7).eval()
            x = torch.randn(2, 3, 64, 64)
    else:
        cfg = model_config(name)
        size = 2 * cfg.stride
        model = vitlab.create_model(name, **tiny(image_size=size, num_classes=7, resnet_width=1)).eval()
        x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)


def test_names_match_without_regard_to_case():
    assert vitlab.create_model("vit-b/16", **tiny(patch_size=16, image_size=32)).config.patch_size == 16
    assert vitlab.create_model("VIT-TI_16", **tiny(image_size=32)).config.patch_size == 16


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="ViT-B/16"):
        vitlab.create_model("ViT-B/61")


@pytest.mark.parametrize("overrides,message", [
    (dict(image_size=225), "not divisible by the patch size 16"),
    (dict(num_heads=5), "not divisible by num_heads 5"),
    (dict(classifier="mean"), "classifier must be"),
    (dict(patch_dropout=1.0), "patch_dropout must be in"),
    (dict(widht=3), "did you mean 'width'"),
])
def test_impossible_configs_are_refused_before_allocation(overrides, message, monkeypatch):
    import vitlab.models.registry as registry
    monkeypatch.setattr(registry, "build_model", lambda cfg: pytest.fail("allocated an invalid model"))
    with pytest.raises(ValueError, match=message):
        registry.create_model("ViT-B/16", **overrides)


def test_default_heads_and_shapes():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8)).eval()
    x = torch.randn(3, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 1 + 16, 32)
    assert model.forward_head(tokens, pre_logits=True).shape == (3, 32)
    assert torch.equal(model.forward_head(tokens), model(x))
    assert torch.equal(model.forward_head(tokens, pre_logits=True), tokens[:, 0])


def test_gap_classifier_has_no_class_token_and_averages_patches():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, classifier="gap")).eval()
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 32)
    tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16, 32)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(1))


def test_pre_logits_layer_is_linear_then_tanh():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, representation_size=24)).eval()
    tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    rep = model.forward_head(tokens, pre_logits=True)
    assert rep.shape == (2, 24)
    torch.testing.assert_close(rep, torch.tanh(model.pre_logits(tokens[:, 0])))
    assert model.head.in_features == 24


def test_official_initialisation():
    model = vitlab.create_model("ViT-B/16", num_classes=10)
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)
    fc1 = model.blocks[0].mlp.fc1
    bound = (6 / (fc1.in_features + fc1.out_features)) ** 0.5
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound  # Xavier uniform
    assert 0 < fc1.bias.abs().max() < 1e-5  # near-zero MLP biases
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


def test_attention_rows_sum_to_one_and_paths_agree():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, depth=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model.forward_features(x)
        explicit, attentions = model.forward_features(x, return_attention=True)
    assert len(attentions) == 3
    for a in attentions:
        assert a.shape == (2, 2, 17, 17)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 17))
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    x = torch.randn(1000, 4, 8)
    assert torch.equal(drop_path(x, 0.3, training=False), x)
    y = drop_path(x, 0.3, training=True)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert torch.all(kept | dropped)
    assert 0.6 < kept.float().mean() < 0.8
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, drop_path=0.5, dropout=0.1)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("prefix", [0, 1])
def test_drop_patches_keeps_the_prefix_and_a_random_subset_of_each_images_patches(prefix):
    tokens = torch.randn(3, prefix + 16, 8)
    kept = drop_patches(tokens, 0.75, prefix)
    assert kept.shape == (3, prefix + 4, 8)
    assert torch.equal(kept[:, :prefix], tokens[:, :prefix])
    for image, image_kept in zip(tokens, kept):
        rows = [int((image[prefix:] == row).all(-1).nonzero()) for row in image_kept[prefix:]]
        assert len(set(rows)) == 4  # distinct patches, none duplicated
    assert not torch.equal(drop_patches(tokens, 0.75, prefix), kept)  # a new subset every call


def test_patch_dropout_only_in_training_and_gradients_reach_every_table_row():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, classifier="gap", patch_dropout=0.5))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    full = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, classifier="gap"))
    full.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), full.eval()(x))
    model.train()
    assert model.forward_features(x).shape == (2, 32, 32)  # 64 patches, half kept
    torch.nn.init.normal_(model.head.weight)  # the zero-initialised head would pass no gradient back
    model(torch.randn(64, 3, 32, 32)).square().sum().backward()
    assert (model.pos_embed.grad.abs().sum(-1) > 0).all()


def test_same_seed_same_model_and_outputs():
    def build():
        torch.manual_seed(123)
        return vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
    a, b = build(), build()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_gelu_choice():
    exact = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
    approx = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, gelu="tanh"))
    assert exact.blocks[0].mlp.act.approximate == "none"
    assert approx.blocks[0].mlp.act.approximate == "tanh"


def test_wrong_input_size_names_the_problem():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
    with pytest.raises(ValueError, match="40x40 px"):
        model(torch.randn(1, 3, 40, 40))


def test_dynamic_image_size_resamples_position_embeddings():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, dynamic_image_size=True)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 64)).shape == (2, 5)
        assert (6, 8) in model.posemb.cache


def test_dynamic_image_size_resamples_again_when_the_learned_table_changes():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, dynamic_image_size=True)).eval()
    x = torch.randn(2, 3, 48, 64)

    def cached_and_fresh():
        with torch.no_grad():
            cached = model.forward_features(x)  # the table resampled for the 6x8 grid, kept between calls
        return cached, model.forward_features(x).detach()  # with gradients on: resampled on every call

    with torch.no_grad():
        model.forward_features(x)
    model.load_state_dict({**model.state_dict(), "pos_embed": torch.randn_like(model.pos_embed)})
    torch.testing.assert_close(*cached_and_fresh())
    model.forward_features(x).square().mean().backward()
    torch.optim.SGD(model.parameters(), lr=10.0).step()  # an optimiser step changes the table in place
    torch.testing.assert_close(*cached_and_fresh())
    with torch.inference_mode():  # tensors made here keep no version counter
        frozen = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, dynamic_image_size=True)).eval()
        assert frozen.forward_features(x).shape == (2, 49, 32)


def test_grad_checkpointing_gives_the_same_gradients():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for g, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("name,overrides", [
    ("ViT-Ti/16", tiny(patch_size=8, representation_size=16)),
    ("ViT-S/32", tiny(patch_size=8, image_size=(32, 48), classifier="gap")),
    ("R50+ViT-B/16", tiny(image_size=64)),
    ("R50+ViT-B/32", tiny(image_size=64)),
    ("BiT-R50x1", dict(image_size=64, num_classes=10)),
])
def test_flops_formula_matches_flop_counter(name, overrides):
    model = vitlab.create_model(name, **overrides).eval()
    h, w = model.config.image_hw if hasattr(model.config, "image_hw") else (64, 64)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if hasattr(model, "blocks"):  # the explicit attention path's matmuls are visible to the counter
            model.forward_head(model.forward_features(torch.randn(1, 3, h, w), return_attention=True)[0])
        else:
            model(torch.randn(1, 3, h, w))
    assert count_flops(model.config) == counter.get_total_flops()


def test_hybrid_stride_and_tokens():
    model = vitlab.create_model("R50+ViT-B/16", **tiny(image_size=64)).eval()
    assert model.config.stride == 16 and model.config.grid_size == (4, 4)
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 17, 32)
    stem = model.patch_embed.backbone
    assert [len(s) for s in stem.stages] == [3, 4, 9]
    assert torch.count_nonzero(stem.stages[0][0].norm3.weight) == 0  # last GroupNorm scale zero-initialised


def test_weight_standardisation_and_same_padding():
    from vitlab.models.resnet import StdConv2d, same_padding
    conv = StdConv2d(4, 8, 3, stride=2)
    x = torch.randn(1, 4, 9, 9)
    w = conv.weight
    w_std = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), w_std, stride=2)
    torch.testing.assert_close(conv(x), expected)
    # SAME for even input, kernel 3, stride 2: TF pads 0 before and 1 after
    assert same_padding(torch.zeros(1, 1, 8, 8), 3, 2).shape[-1] == 9
    padded = same_padding(torch.ones(1, 1, 8, 8), 3, 2)
    assert padded[0, 0, 0, 0] == 1 and padded[0, 0, -1, -1] == 0


def _hf_from_ours(model, directory):
    """transformers' ViTModel holding our weights, through vitlab's Hugging Face export (checkpoints.hf)."""
    transformers = pytest.importorskip("transformers")
    from vitlab.checkpoints import export_checkpoint
    export_checkpoint(model, directory, "hf")
    return transformers.ViTModel.from_pretrained(directory, add_pooling_layer=False,
                                                 attn_implementation="eager").eval()


def test_parity_with_hugging_face_vitmodel(tmp_path):
    model = vitlab.create_model("ViT-S/16", width=64, depth=3, mlp_dim=128, num_heads=4, image_size=48).eval()
    for p in model.parameters():  # random everything, so no zero-initialised part hides a mistake
        torch.nn.init.normal_(p, std=0.1)
    hf = _hf_from_ours(model, tmp_path)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ours = model.forward_features(x)
        theirs = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
