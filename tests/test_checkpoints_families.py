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
from safetensors.torch import load_file

from reference_vit import forward as reference
from reference_vit import random_official_params
from vitlab import load_pretrained
from vitlab.checkpoints.export import export_checkpoint

HYBRIDS = {  # name: (units per stage, root width = int(64 * width factor), patch, grid (h, w))
    # "R+Ti/16 (zero stages)": ((), 64, 2, (2, 3)),  -- needs ViTConfig.stride for zero stages (models)
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
