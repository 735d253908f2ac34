"""Every ViT checkpoint family of the paper's lineage, read with logits parity and written back.

Official / big_vision layouts are built from random weights in their own parameter naming and compared with
tests/reference_vit.py (an independent float64 forward pass of the official computation). timm layouts are
compared with fixtures timm itself wrote (tests/fixtures/timm/, made by tests/fixtures/make_timm_fixtures.py
in a separate environment where timm is installed): its state dict, an input, and its logits.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reference_vit import forward as reference
from reference_vit import random_official_params
from vitlab import load_pretrained
from vitlab.checkpoints.export import export_checkpoint

HYBRIDS = {  # name: (units per stage, root width = int(64 * width factor), patch, grid (h, w))
    "R+Ti/16 (zero stages)": ((), 64, 2, (2, 3)),
    "R26+S/32 (four stages)": ((1, 1, 1, 1), 64, 1, (1, 2)),
    "two stages, width factor 0.5": ((1, 1), 32, 1, (2, 2)),
    "three stages, width factor 1.5": ((1, 1, 1), 96, 1, (2, 1)),
}


def stride(layers, patch):
    return patch * 4 * 2 ** max(len(layers) - 1, 0)


def max_diff(model, params, x, **kw):
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x)).double().numpy()
    return np.abs(ours - reference(params, x, **kw)).max()


@pytest.mark.parametrize("name", HYBRIDS)
def test_official_hybrid_of_any_depth_and_width(tmp_path, name):
    layers, root, patch, grid = HYBRIDS[name]
    params = random_official_params(width=32, heads=2, patch=patch, grid=grid, hybrid_layers=layers,
                                    hybrid_width=root)
    np.savez(tmp_path / "h.npz", **params)
    size = tuple(g * stride(layers, patch) for g in grid)
    model = load_pretrained(tmp_path / "h.npz", image_size=size)
    assert model.config.resnet_layers == layers and model.config.image_hw == size
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *size)).astype(np.float32)
    assert max_diff(model, params, x) <= 1e-4
    back = export_checkpoint(model, tmp_path / "back.npz", "npz")
    written = dict(np.load(back))
    assert set(written) == set(params) and all(np.array_equal(written[k], params[k]) for k in params)


# ---- timm, against timm's own logits (tests/fixtures/timm) -----------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "timm"


def timm_fixture(name):
    """(the state dict file, the input, timm's logits, the input's (h, w))."""
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    x = io["input"].float()
    return FIXTURES / f"{name}.safetensors", x, io["logits"].double(), tuple(x.shape[-2:])


def timm_max_diff(model, x, expected):
    with torch.no_grad():
        return (model.eval()(x).double() - expected).abs().max().item()


@pytest.mark.parametrize("name, layers, root", [("hybrid_one_stage_wf05", (1,), 32)])
def test_timm_hybrid_matches_timm(tmp_path, name, layers, root):
    path, x, expected, hw = timm_fixture(name)
    model = load_pretrained(path, image_size=hw, num_heads=2)
    cfg = model.config
    assert cfg.resnet_layers == layers and int(64 * cfg.resnet_width) == root and cfg.image_hw == hw
    assert timm_max_diff(model, x, expected) <= 1e-5
    back = load_pretrained(export_checkpoint(model, tmp_path / "back.safetensors", "timm"), image_size=hw, num_heads=2)
    assert set(load_file(str(tmp_path / "back.safetensors"))) == set(load_file(str(path)))  # timm's own names
    assert timm_max_diff(back, x, expected) <= 1e-5


# ---- big_vision layouts: MAP heads, fixed sin-cos position embeddings, GAP without a class token -------------
BIG_VISION = {  # name: (random_official_params options, classifier, posemb); token=False: pool_type map / gap
    "MAP head, learned posemb": (dict(token=False, map_head=True), "map", "learned_1d"),
    "MAP head, sincos2d": (dict(token=False, map_head=True, posemb="sincos2d"), "map", "sincos_2d"),
    "GAP without class token, sincos2d": (dict(token=False, posemb="sincos2d"), "gap", "sincos_2d"),
    "class token, sincos2d": (dict(token=True, posemb="sincos2d"), "token", "sincos_2d"),
}


@pytest.mark.parametrize("name", BIG_VISION)
@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_big_vision_families(tmp_path, name, scan):
    from test_checkpoints import to_big_vision

    options, classifier, posemb = BIG_VISION[name]
    params = random_official_params(width=32, heads=2, patch=8, grid=(4, 4), **options)
    np.savez(tmp_path / "bv.npz", **to_big_vision(params, scan))
    model = load_pretrained(tmp_path / "bv.npz", image_size=32)
    assert (model.config.classifier, model.config.posemb) == (classifier, posemb)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    assert max_diff(model, params, x, cls_posemb=False) <= 1e-4
    back = load_pretrained(export_checkpoint(model, tmp_path / "back.npz", "npz"), image_size=32)
    with torch.no_grad():
        assert torch.allclose(back.eval()(torch.from_numpy(x)), model(torch.from_numpy(x)), atol=1e-6)


TIMM_FAMILIES = {  # fixture: what the config must say
    "hybrid_zero_stages": dict(resnet_layers=(), resnet_width=1),
    "deit_distilled": dict(distill_token=True, classifier="token"),
    "deit3_layerscale": dict(classifier="token"),
    "registers_gap": dict(reg_tokens=4, classifier="gap", fc_norm=True),
    "dinov2_registers": dict(reg_tokens=4, classifier="token"),
    "siglip_map": dict(classifier="map"),
    "gap_no_class_token": dict(classifier="gap"),
}


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_families_match_timm(tmp_path, name):
    path, x, expected, hw = timm_fixture(name)
    model = load_pretrained(path, image_size=hw, num_heads=2)
    for key, value in TIMM_FAMILIES[name].items():
        assert getattr(model.config, key) == value, key
    assert timm_max_diff(model, x, expected) <= 1e-5
    back = load_pretrained(export_checkpoint(model, tmp_path / "back.safetensors", "timm"), image_size=hw, num_heads=2)
    assert timm_max_diff(back, x, expected) <= 1e-5


@pytest.mark.parametrize("settings", [dict(distill_token=True), dict(reg_tokens=4), dict(layer_scale=1e-5),
                                      dict(posemb="sincos_2d")])
def test_hf_export_refuses_what_transformers_vit_cannot_compute(tmp_path, settings):
    from conftest import tiny
    from vitlab import create_model
    from vitlab.checkpoints import CheckpointError

    model = create_model("ViT-Ti/16", **tiny(patch_size=8, **settings))
    with pytest.raises(CheckpointError, match="transformers' ViT has none"):
        export_checkpoint(model, tmp_path / "hf", "hf")


@pytest.mark.parametrize("settings", [dict(distill_token=True), dict(reg_tokens=4), dict(layer_scale=1e-5),
                                      dict(classifier="gap", fc_norm=True)])
def test_npz_export_refuses_what_the_official_layout_cannot_hold(tmp_path, settings):
    from conftest import tiny
    from vitlab import create_model
    from vitlab.checkpoints import CheckpointError

    model = create_model("ViT-Ti/16", **tiny(patch_size=8, **settings))
    with pytest.raises(CheckpointError, match="cannot export to npz"):
        export_checkpoint(model, tmp_path / "m.npz", "npz")


def test_timm_map_over_prefix_tokens_is_refused(tmp_path):
    from vitlab.checkpoints import CheckpointError

    path, *_ = timm_fixture("siglip_map")
    tensors = load_file(str(path))
    tensors["cls_token"] = torch.zeros(1, 1, 32, dtype=tensors["pos_embed"].dtype)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="attention pool over cls_token"):
        load_pretrained(tmp_path / "m.safetensors", num_heads=2)
