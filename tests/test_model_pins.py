"""Every registered model, and every model setting, computes exactly what it computed when the fixture was made.

tests/fixtures/model_pins.json holds, for each case: the state-dict keys and shapes (at tiny size; at full size a
digest of them), a fingerprint of the freshly initialised weights (so the random-number stream of the
initialisation is pinned too), and the logits for a fixed input after every weight is set from a fixed seed,
in evaluation and in training mode (dropout, stochastic depth, PatchDropout drawn from a fixed seed).

Everything runs on one thread (kernels may split sums differently on more). On the machine kind the fixture was
made on (same torch version and CPU capability) every number must be bit-identical; elsewhere, where kernels
may round differently, within 1e-5. Regenerate only on purpose, for a
change that is meant to change what a model computes:

    python tests/test_model_pins.py --write
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.models import list_models

FIXTURE = Path(__file__).parent / "fixtures" / "model_pins.json"
TINY_VIT = dict(width=32, depth=2, mlp_dim=64, num_heads=2, num_classes=5)
# the settings cases: 4 px patches on 16 x 24 images (a 4 x 6 grid, so rows and columns differ)
SMALL = dict(patch_size=4, width=16, depth=2, mlp_dim=32, num_heads=2, image_size=(16, 24), num_classes=3)
POSEMBS = ("learned_1d", "learned_2d", "sincos_2d", "relative", "none")
TRAINING = dict(dropout=0.1, attention_dropout=0.1, drop_path=0.2)


def registered_case(name: str) -> dict:
    """A registered model at tiny size: its own patch size, stem and attention, a 2 x 3 patch grid."""
    if name.startswith("BiT-"):
        return dict(model=name, overrides=dict(width_factor=0.5, num_classes=5, image_size=32), image_hw=(32, 32))
    cfg = vitlab.models.model_config(name)
    hw = (2 * cfg.stride, 3 * cfg.stride)
    return dict(model=name, overrides=dict(TINY_VIT, image_size=hw), image_hw=hw)


def settings_cases() -> dict[str, dict]:
    cases = {}
    for posemb in POSEMBS:
        for tokens, extra in (("token", {}), ("gap", dict(classifier="gap")),
                              ("deit-registers", dict(distill_token=True, reg_tokens=2)),
                              ("gap-class-registers", dict(classifier="gap", class_token=True, reg_tokens=1))):
            cases[f"{posemb}-{tokens}"] = dict(overrides=dict(SMALL, posemb=posemb, **extra))
        if posemb != "none":
            dynamic = dict(SMALL, posemb=posemb, dynamic_image_size=True)
            cases[f"{posemb}-dynamic"] = dict(overrides=dynamic, image_hw=(20, 28))
            cases[f"{posemb}-dynamic-bicubic"] = dict(overrides=dict(dynamic, posemb_resample="bicubic"),
                                                      image_hw=(12, 32))
            cases[f"{posemb}-resized"] = dict(overrides=dict(SMALL, posemb=posemb, reg_tokens=1),
                                              resize=(24, 20), image_hw=(24, 20))
        cases[f"{posemb}-training"] = dict(overrides=dict(SMALL, posemb=posemb, **TRAINING))
    for classifier in ("token", "gap"):
        cases[f"axial-{classifier}"] = dict(overrides=dict(SMALL, attention="axial", classifier=classifier,
                                                           reg_tokens=1, **TRAINING))
    cases.update({
        "map": dict(overrides=dict(SMALL, classifier="map")),
        "map-class-token": dict(overrides=dict(SMALL, classifier="map", class_token=True, reg_tokens=2)),
        "gap-fc-norm": dict(overrides=dict(SMALL, classifier="gap", fc_norm=True)),
        "layer-scale": dict(overrides=dict(SMALL, layer_scale=1e-2, **TRAINING)),
        "pre-logits-deit": dict(overrides=dict(SMALL, representation_size=8, distill_token=True, **TRAINING)),
        "qkv-no-bias-tanh": dict(overrides=dict(SMALL, qkv_bias=False, gelu="tanh", layer_norm_eps=1e-5)),
        "patch-dropout": dict(overrides=dict(SMALL, patch_dropout=0.5, reg_tokens=1, **TRAINING)),
        "patch-dropout-gap": dict(overrides=dict(SMALL, patch_dropout=0.25, classifier="gap", posemb="learned_2d")),
        "no-head": dict(overrides=dict(SMALL, num_classes=0, classifier="gap")),
        "hybrid-one-stage": dict(overrides=dict(SMALL, patch_size=1, resnet_layers=(1,), image_size=(16, 32),
                                                ws_eps=1e-8, gn_eps=1e-5, ws_eps_in_sqrt=True, in_chans=1)),
        "hybrid-no-stage": dict(overrides=dict(SMALL, patch_size=2, resnet_layers=(), image_size=(16, 24))),
        "spt-lsa": dict(overrides=dict(SMALL, patch_embed="spt", attention="lsa", reg_tokens=1)),
        "spt-lsa-gap-relative": dict(overrides=dict(SMALL, patch_embed="spt", attention="lsa", classifier="gap",
                                                    posemb="relative", **TRAINING)),
        "spt-patch-dropout": dict(overrides=dict(SMALL, patch_embed="spt", patch_dropout=0.5, **TRAINING)),
        "lsa-deit-resized": dict(overrides=dict(SMALL, attention="lsa", distill_token=True), resize=(24, 20),
                                 image_hw=(24, 20)),
        "spt-odd-patch-dynamic": dict(overrides=dict(SMALL, patch_embed="spt", patch_size=3, image_size=(12, 18),
                                                     dynamic_image_size=True, in_chans=1), image_hw=(15, 9)),
    })
    return {name: dict(model="ViT-Ti/16", **case) for name, case in cases.items()}


def all_cases() -> dict[str, dict]:
    return {**{name: registered_case(name) for name in list_models()}, **settings_cases()}


def fingerprint(state: dict[str, torch.Tensor]) -> list[float]:
    """Two float64 numbers that move when any weight moves: the sum, and a sum weighted by position."""
    total, weighted = 0.0, 0.0
    for i, key in enumerate(sorted(state)):
        t = state[key].detach().double().flatten()
        total += t.sum().item()
        weighted += (t * torch.linspace(-1.0, 1.0, t.numel(), dtype=torch.float64)).sum().item() * (i + 1)
    return [total, weighted]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter from a fixed seed (zero-initialised heads and tokens included), in key order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for key in sorted(params):
            params[key].copy_(torch.randn(params[key].shape, generator=g) * 0.3)


def outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, list]:
    out = {}
    model.eval()
    with torch.no_grad():
        out["eval"] = model(x).flatten().tolist()
        if getattr(model.config, "distill_token", False):
            out["eval_heads"] = torch.cat(model.forward_heads(x), dim=1).flatten().tolist()
        if isinstance(model, vitlab.VisionTransformer):
            model.train()
            torch.manual_seed(1)
            out["train"] = model(x).flatten().tolist()
            if model.config.distill_token:
                torch.manual_seed(1)
                out["train_heads"] = torch.cat(model.forward_heads(x), dim=1).flatten().tolist()
    return out


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def compute(case: dict) -> dict:
    torch.manual_seed(0)
    model = vitlab.create_model(case["model"], **case["overrides"])
    state = model.state_dict()
    record = dict(keys=[f"{k} {tuple(v.shape)}" for k, v in state.items()], init=fingerprint(state))
    if "resize" in case:
        model.set_image_size(case["resize"])
        record["resized_keys"] = [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]
    randomise(model)
    h, w = case.get("image_hw", model.config.image_size)
    x = torch.randn(2, model.config.in_chans, h, w, generator=torch.Generator().manual_seed(2))
    record.update(outputs(model, x))
    return record


def full_size_keys(name: str) -> str:
    """A digest of the keys and shapes of the model at its registered size (built on the meta device)."""
    with torch.device("meta"):
        model = vitlab.create_model(name)
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()


def machine() -> str:
    return f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}"


@pytest.fixture(scope="module")
def pins() -> dict:
    return json.loads(FIXTURE.read_text())


def test_the_pins_cover_every_registered_model(pins):
    assert set(list_models()) <= set(pins["cases"]) and set(list_models()) == set(pins["full_size_keys"])
    assert set(all_cases()) == set(pins["cases"])


@pytest.mark.parametrize("name", list_models())
def test_full_size_state_dict_keys_are_pinned(pins, name):
    assert full_size_keys(name) == pins["full_size_keys"][name]


@pytest.mark.parametrize("name", list(all_cases()))
def test_model_computes_what_it_computed(pins, name):
    expected, got = pins["cases"][name], compute(all_cases()[name])
    assert got.keys() == expected.keys()
    for field in ("keys", "resized_keys"):
        assert got.get(field) == expected.get(field)
    exact = pins["machine"] == machine()
    for field in got.keys() - {"keys", "resized_keys"}:
        a, b = torch.tensor(got[field], dtype=torch.float64), torch.tensor(expected[field], dtype=torch.float64)
        if exact:
            assert torch.equal(a, b), f"{name}: {field} changed"
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name}: {field} changed")


def write() -> None:
    cases = {name: compute(case) for name, case in all_cases().items()}
    pins = dict(machine=machine(), full_size_keys={name: full_size_keys(name) for name in list_models()},
                cases=cases)
    FIXTURE.write_text(json.dumps(pins, indent=0) + "\n")
    print(f"wrote {FIXTURE} ({len(cases)} cases, {machine()})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_model_pins.py --write")
    write()
