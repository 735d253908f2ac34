"""Largest logit difference, per checkpoint format, between vitlab and the code that wrote the weights.

    PYTHONPATH=src python benchmarks/parity.py [--size tiny|base]
    PYTHONPATH=src python benchmarks/parity.py --smoke     # the smallest shapes: that it runs (the tests do this)

Each checkpoint is built from random weights: official and big_vision .npz and timm state dicts from the
documented names (compared with tests/reference_vit.py, an independent float64 numpy forward pass of the
official computation, in the official or timm flavour); Hugging Face folders by transformers itself (compared
with transformers' logits), and vitlab's export loaded by transformers. The "(float64)" column runs vitlab in
float64: what remains there is the mapping's own error, the rest of the float32 column is float32 rounding.
The last column shows what a wrong choice would cost (e.g. the exact GELU for an official file), so the
tolerance is seen to discriminate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_vit import forward as reference  # noqa: E402
from reference_vit import random_official_params  # noqa: E402
from test_checkpoints import to_big_vision, to_timm  # noqa: E402

from vitlab.checkpoints import export_checkpoint, load_pretrained  # noqa: E402

SIZES = {  # (ViT, hybrid) architectures; "base" is ViT-B/16 and R50+ViT-B/16 at 224 px
    "smoke": (dict(width=192, depth=1, heads=3, mlp_dim=64, patch=16, grid=(2, 2)),  # 192: a width timm files imply
              dict(width=192, depth=1, heads=3, mlp_dim=64, patch=1, grid=(1, 1), hybrid_layers=(1, 1))),
    "tiny": (dict(width=192, depth=2, heads=3, mlp_dim=384, patch=16, grid=(4, 4)),
             dict(width=192, depth=2, heads=3, mlp_dim=384, patch=1, grid=(2, 2), hybrid_layers=(1, 2))),
    "base": (dict(width=768, depth=12, heads=12, mlp_dim=3072, patch=16, grid=(14, 14), classes=1000),
             dict(width=768, depth=12, heads=12, mlp_dim=3072, patch=1, grid=(14, 14), classes=1000,
                  hybrid_layers=(3, 4, 9))),
}


def logits(model, x, dtype=torch.float32) -> np.ndarray:
    with torch.no_grad():
        return model.eval().to(dtype)(torch.from_numpy(x).to(dtype)).double().numpy()


def diffs(model, x, expected) -> tuple[float, float]:
    """Largest |Δ logit| with vitlab in float32, and in float64 (what is left there is the mapping's own error)."""
    return (np.abs(logits(model, x) - expected).max(), np.abs(logits(model, x, torch.float64) - expected).max())


def hw(arch) -> tuple[int, int]:
    stride = arch["patch"] * (4 * 2 ** max(len(arch["hybrid_layers"]) - 1, 0) if "hybrid_layers" in arch else 1)
    return arch["grid"][0] * stride, arch["grid"][1] * stride


def npz_rows(tmp: Path, vit: dict, hybrid: dict):
    for name, arch in (("official .npz ViT", vit), ("official .npz hybrid", hybrid)):
        params = random_official_params(**arch)
        np.savez(tmp / "o.npz", **params)
        x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(arch))).astype(np.float32)
        expected = reference(params, x)
        wrong = load_pretrained(tmp / "o.npz", gelu="exact")
        yield name, *diffs(load_pretrained(tmp / "o.npz"), x, expected), 1e-4, \
            "exact GELU", np.abs(logits(wrong, x) - expected).max()
    params = random_official_params(**vit)
    np.savez(tmp / "bv.npz", **to_big_vision(params, scan=True))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(vit))).astype(np.float32)
    no_cls_row = dict(params)
    no_cls_row["Transformer/posembed_input/pos_embedding"] = params["Transformer/posembed_input/pos_embedding"][:, 1:]
    expected = reference(no_cls_row, x, cls_posemb=False)
    wrong = reference(params, x)  # had we kept a class row of the official kind
    yield "big_vision .npz (scanned)", *diffs(load_pretrained(tmp / "bv.npz"), x, expected), 1e-4, \
        "posemb on [class]", np.abs(wrong - expected).max()


def timm_rows(tmp: Path, vit: dict, hybrid: dict):
    for name, arch in (("timm ViT", vit), ("timm hybrid", hybrid)):
        params = random_official_params(**arch)
        save_file(to_timm(params), str(tmp / "t.safetensors"))
        x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(arch))).astype(np.float32)
        expected = reference(params, x, flavour="timm")
        wrong_what, wrong = ("official eps", dict(ws_eps=1e-5, gn_eps=1e-6)) if "hybrid_layers" in arch else \
            ("tanh GELU", dict(gelu="tanh"))
        yield name, *diffs(load_pretrained(tmp / "t.safetensors"), x, expected), 1e-5, \
            wrong_what, np.abs(logits(load_pretrained(tmp / "t.safetensors", **wrong), x) - expected).max()


def hybrid_rows(tmp: Path, vit: dict):
    """Official hybrids of other depths and widths: zero stages (R+Ti/16), four (R26+S/32), width factor 0.5."""
    for name, layers, root in (("hybrid, 0 stages (R+Ti)", (), 64), ("hybrid, 4 stages (R26)", (1, 1, 1, 1), 64),
                               ("hybrid, width 0.5", (1, 1), 32)):
        arch = dict(vit, patch=1 if layers else 8, grid=(2, 2), hybrid_layers=layers, hybrid_width=root)
        params = random_official_params(**arch)
        np.savez(tmp / "h.npz", **params)
        x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(arch))).astype(np.float32)
        expected = reference(params, x)
        wrong = load_pretrained(tmp / "h.npz", gelu="exact")
        yield f"official .npz {name}", *diffs(load_pretrained(tmp / "h.npz"), x, expected), 1e-4, \
            "exact GELU", np.abs(logits(wrong, x) - expected).max()


def big_vision_family_rows(tmp: Path, vit: dict):
    """big_vision layouts beyond the paper's: MAP heads, fixed sincos2d position embeddings, GAP."""
    for name, options in (("big_vision MAP head", dict(token=False, map_head=True)),
                          ("big_vision MAP head + sincos2d", dict(token=False, map_head=True, posemb="sincos2d")),
                          ("big_vision GAP, no [class], sincos2d", dict(token=False, posemb="sincos2d"))):
        params = random_official_params(**vit, **options)
        np.savez(tmp / "bv.npz", **to_big_vision(params, scan=True))
        x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(vit))).astype(np.float32)
        expected = reference(params, x, cls_posemb=False)
        wrong = load_pretrained(tmp / "bv.npz", image_size=hw(vit), gelu="exact")
        yield name, *diffs(load_pretrained(tmp / "bv.npz", image_size=hw(vit)), x, expected), 1e-4, "exact GELU", \
            np.abs(logits(wrong, x) - expected).max()


def timm_fixture_rows(tmp: Path, vit: dict):
    """The timm families of tests/fixtures/timm (written by timm itself), against timm's own logits."""
    from safetensors.torch import load_file

    fixtures = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "timm"
    for path in sorted(fixtures.glob("*.io.safetensors")):
        name = path.name.removesuffix(".io.safetensors")
        io = load_file(str(path))
        x, expected = io["input"].float().numpy(), io["logits"].double().numpy()
        model = load_pretrained(fixtures / f"{name}.safetensors", image_size=tuple(x.shape[-2:]), num_heads=2)
        yield f"timm {name}", np.abs(logits(model, x) - expected).max(), float("nan"), 1e-5, "", float("nan")


def flexi_rows(tmp: Path, vit: dict):
    """FlexiViT: the model at another patch size, on each patch resized likewise; pinv vs plain bilinear."""
    from test_checkpoints_flexi import resize_each_patch

    from vitlab.checkpoints.adapt import set_patch_size

    params = random_official_params(**vit)
    np.savez(tmp / "f.npz", **params)
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(vit))).astype(np.float32))
    original = load_pretrained(tmp / "f.npz").eval()
    with torch.no_grad():
        expected = original(x)
    p = vit["patch"]
    for new in (p * 3 // 2, 2 * p, p // 2):
        errors = {}
        for method in ("pinv", "bilinear"):
            model = load_pretrained(tmp / "f.npz").eval()
            set_patch_size(model, new, method)
            with torch.no_grad():
                errors[method] = (model(resize_each_patch(x, p, new)) - expected).abs().max().item()
        tol = 1e-4 if new > p else float("nan")  # downsampling loses information: no exact answer exists
        yield f"FlexiViT patch {p} -> {new} (pinv)", errors["pinv"], float("nan"), tol, "bilinear kernel", \
            errors["bilinear"]


def hf_rows(tmp: Path, vit: dict):
    import transformers
    config = transformers.ViTConfig(hidden_size=vit["width"], num_hidden_layers=vit["depth"],
                                    num_attention_heads=vit["heads"], intermediate_size=vit["mlp_dim"],
                                    image_size=hw(vit)[0], patch_size=vit["patch"], num_labels=10)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp / "hf")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, *hw(vit))).astype(np.float32)
    with torch.no_grad():
        expected = hf(pixel_values=torch.from_numpy(x)).logits.double().numpy()
    ours = load_pretrained(tmp / "hf")
    yield "Hugging Face folder", np.abs(logits(ours, x) - expected).max(), float("nan"), 1e-5, \
        "tanh GELU", np.abs(logits(load_pretrained(tmp / "hf", gelu="tanh"), x) - expected).max()
    export_checkpoint(ours, tmp / "hf_export", "hf")
    back = transformers.ViTForImageClassification.from_pretrained(tmp / "hf_export").eval()
    with torch.no_grad():
        theirs = back(pixel_values=torch.from_numpy(x)).logits.double().numpy()
    yield "vitlab -> HF export (transformers)", np.abs(theirs - logits(ours, x)).max(), float("nan"), 1e-5, "", \
        float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--smoke", dest="size", action="store_const", const="smoke", help="--size smoke")
    args = parser.parse_args()
    vit, hybrid = SIZES[args.size]
    print(f"{'format':<36} {'max |Δ logit|':>14} {'(float64)':>10} {'tolerance':>10}   {'a wrong choice':<18} "
          f"{'its Δ':>9}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rows in (npz_rows(tmp, vit, hybrid), hybrid_rows(tmp, vit), big_vision_family_rows(tmp, vit),
                     timm_rows(tmp, vit, hybrid), timm_fixture_rows(tmp, vit), hf_rows(tmp, vit), flexi_rows(tmp, vit)):
            for name, diff, diff64, tol, wrong_what, wrong in rows:
                mark = "ok" if diff <= tol else ("over" if tol == tol else "")
                print(f"{name:<36} {diff:>14.2e} {diff64:>10.1e} {tol:>10.0e}   {wrong_what:<18} {wrong:>9.2e}  {mark}",
                      flush=True)


if __name__ == "__main__":
    main()
