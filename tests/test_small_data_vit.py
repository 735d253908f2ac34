"""Shifted patch tokenization (patch_embed = "spt") and locality self-attention (attention = "lsa"), from Lee, Lee &
Song, "Vision Transformer for Small-Size Datasets" (2021).

Each is checked against a reference written here with explicit loops in float64 (the four shifts and their zero
padding, the per-patch LayerNorm and projection; the masked diagonal and the per-head temperature), then through
every path a model takes: the fast attention paths, torch.compile, save / load, resampling, training, `vitlab
models`, `vitlab inspect`, the refusals.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import training_support as ts
import vitlab
from vitlab.cli import main
from vitlab.models import count_flops, count_parameters, model_config
from vitlab.models.fast import compile_model, fast_inference, onednn_bf16_available
from vitlab.models.spt import shifted_views
from vitlab.runtime import autocast

SMALL = dict(patch_size=4, width=16, depth=2, mlp_dim=32, num_heads=2, image_size=(16, 24), num_classes=3)
BOTH = dict(patch_embed="spt", attention="lsa")


def build(**overrides):
    return vitlab.create_model("ViT-Ti/16", **{**SMALL, **overrides})


def randomise(model, seed=0):
    """Every parameter random (zero heads, unit LayerNorms and the initial temperatures included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1.0 + 0.5 * value.abs() if name.endswith("temperature") else 0.5 * value)
    return model


# ---- SPT: the reference -------------------------------------------------------------------------------
def shifted_reference(x, dy, dx, s):
    """x moved by (dy * s, dx * s) pixels, pixel by pixel; zero where nothing moved in."""
    out = torch.zeros_like(x)
    H, W = x.shape[-2:]
    for i in range(H):
        for j in range(W):
            if 0 <= i - dy * s < H and 0 <= j - dx * s < W:
                out[..., i, j] = x[..., i - dy * s, j - dx * s]
    return out


def spt_reference(module, x):
    """Per patch: the image and its up-left, up-right, down-left, down-right copies, flattened (copy, channel,
    row, column), layer-normed by hand, projected."""
    P, s = module.patch_size, module.patch_size // 2
    views = [x] + [shifted_reference(x, dy, dx, s) for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))]
    gh, gw = x.shape[-2] // P, x.shape[-1] // P
    tokens = []
    for a in range(gh):
        for b in range(gw):
            v = torch.cat([view[:, :, a * P:(a + 1) * P, b * P:(b + 1) * P].reshape(x.shape[0], -1) for view in views], 1)
            mean, var = v.mean(1, keepdim=True), v.var(1, unbiased=False, keepdim=True)
            v = (v - mean) / torch.sqrt(var + module.norm.eps) * module.norm.weight + module.norm.bias
            tokens.append(v @ module.proj.weight.T + module.proj.bias)
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("patch", [2, 3, 4])
def test_shifted_views_are_the_image_and_its_four_diagonal_shifts_by_half_a_patch(patch):
    x = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    s = patch // 2
    views = shifted_views(x, s)
    assert views.shape == (2, 15, 6, 9)
    expected = [x] + [shifted_reference(x, dy, dx, s) for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))]
    torch.testing.assert_close(views, torch.cat(expected, dim=1), rtol=0, atol=0)


def test_a_single_pixel_moves_along_each_diagonal_and_off_the_border_is_zero():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 5] = 1.0
    views = shifted_views(x, 2)[0]
    where = [tuple(torch.nonzero(v).flatten().tolist()) for v in views]
    assert where == [(3, 5), (1, 3), (1, 7), (5, 3), (5, 7)]  # itself, up-left, up-right, down-left, down-right
    corner = torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 0] = 1.0
    assert shifted_views(corner, 2)[0, 1:4].sum() == 0  # moved up or left: gone (zero padding, no wrap-around)
    assert shifted_views(corner, 2)[0, 4, 2, 2] == 1


@pytest.mark.parametrize("overrides", [dict(), dict(patch_size=3, image_size=(12, 9), in_chans=1)])
def test_spt_module_matches_the_reference(overrides):
    model = randomise(build(patch_embed="spt", **overrides)).double()
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, *cfg.image_hw, dtype=torch.float64)
    module = model.patch_embed
    assert module.norm.normalized_shape == (5 * cfg.in_chans * cfg.patch_size**2,)
    assert module.proj.weight.shape == (16, 5 * cfg.in_chans * cfg.patch_size**2)
    torch.testing.assert_close(module(x), spt_reference(module, x))


def test_spt_image_filters_put_each_copy_where_its_pixels_lie():
    """The folded filters, applied to the image, give the projection of the LayerNorm's scaled input."""
    module = randomise(build(patch_embed="spt")).double().patch_embed
    P, s = 4, 2
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    filters = module.image_filters()
    assert filters.shape == (16, 3, P + 2 * s, P + 2 * s)
    views = shifted_views(x, s)
    patches = views.view(1, 15, 4, P, 6, P).permute(0, 2, 4, 1, 3, 5).reshape(1, 24, -1)
    linear = (patches * module.norm.weight) @ module.proj.weight.T  # no centring, no bias
    padded = F.pad(x, (s, s, s, s))
    for a, b in ((0, 0), (1, 3), (3, 5)):  # patches at the border and inside
        window = padded[0, :, a * P:a * P + P + 2 * s, b * P:b * P + P + 2 * s]
        torch.testing.assert_close((filters * window).sum((1, 2, 3)), linear[0, a * 6 + b])


# ---- LSA: the reference -------------------------------------------------------------------------------
def lsa_reference(attn, x, bias=None):
    """softmax over j != i of q_i . k_j / tau_h (+ bias), per head, in explicit sums."""
    B, T, D = x.shape
    H = attn.num_heads
    d = D // H
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).view(B, T, 3, H, d).unbind(2)
    out = torch.zeros(B, T, H, d, dtype=x.dtype)
    weights = torch.zeros(B, H, T, T, dtype=x.dtype)
    for h in range(H):
        logits = torch.einsum("bid,bjd->bij", q[:, :, h], k[:, :, h]) / attn.temperature[h]
        if bias is not None:
            logits = logits + bias[:, h]
        for i in range(T):
            logits[:, i, i] = -math.inf
        weights[:, h] = torch.softmax(logits, dim=-1)
        out[:, :, h] = torch.einsum("bij,bjd->bid", weights[:, h], v[:, :, h])
    return out.reshape(B, T, D) @ attn.proj.weight.T + attn.proj.bias, weights


def test_lsa_temperature_starts_at_the_square_root_of_the_head_width():
    attn = build(attention="lsa", width=32, num_heads=2).blocks[0].attn
    assert attn.temperature.shape == (2,) and torch.equal(attn.temperature.detach(), torch.full((2,), 4.0))
    assert build().blocks[0].attn.temperature is None  # full attention: no temperature, as ever


@pytest.mark.parametrize("return_attention", [True, False])  # the explicit path and the SDPA kernel
def test_lsa_matches_the_reference(return_attention):
    attn = randomise(build(attention="lsa")).double().blocks[0].attn.eval()
    x = torch.randn(2, 1 + 24, 16, dtype=torch.float64)
    expected, expected_weights = lsa_reference(attn, x)
    out, weights = attn(x, return_attention)
    torch.testing.assert_close(out, expected)
    if return_attention:
        torch.testing.assert_close(weights, expected_weights)
        assert torch.all(weights.diagonal(dim1=-2, dim2=-1) == 0)


def test_lsa_with_relative_position_bias_masks_after_adding_it():
    model = randomise(build(attention="lsa", posemb="relative")).double().eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 1 + 24, 16, dtype=torch.float64)
    q = (x @ attn.qkv.weight.T + attn.qkv.bias).view(2, 25, 3, 2, 8)[:, :, 0].transpose(1, 2)
    expected, _ = lsa_reference(attn, x, bias=attn.relative(q, (4, 6)))
    for return_attention in (True, False):
        torch.testing.assert_close(attn(x, return_attention, (4, 6))[0], expected)


def test_a_lone_token_attends_to_itself_rather_than_to_nothing():
    attn = randomise(build(attention="lsa")).blocks[0].attn.eval()
    x = torch.randn(2, 1, 16)
    v = (x @ attn.qkv.weight.T + attn.qkv.bias)[..., 32:]
    for return_attention in (True, False):
        torch.testing.assert_close(attn(x, return_attention)[0], attn.proj(v))


# ---- the fast paths -------------------------------------------------------------------------------------
def assert_close_bf16(out, ref):
    err = (out.float() - ref).abs().max() / ref.pow(2).mean().sqrt()
    assert err < 0.05, f"bf16 error {err:.4f} of the output RMS"


def test_bf16_cpu_takes_the_explicit_path_and_matches_the_fp32_model(monkeypatch):
    from vitlab.models import vit
    model = randomise(build(**BOTH), seed=1).eval()
    x = torch.randn(4, 3, 16, 24)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(vit.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        ref = model(x)
        assert len(calls) == 2  # fp32: SDPA with the locality mask, one call per block
        with autocast("cpu", "bf16"):
            out = model(x)
        assert len(calls) == 2  # bf16 on the CPU: the explicit path
        assert_close_bf16(out, ref)
        assert_close_bf16(fast_inference(model, pack=False)(x), ref)
        _, weights = model.forward_features(x.bfloat16().float(), return_attention=True)
        assert all(torch.all(w.diagonal(dim1=-2, dim2=-1) == 0) for w in weights)


@pytest.mark.skipif(not onednn_bf16_available(), reason="no oneDNN bf16 on this CPU")
def test_packed_bf16_inference_matches_the_fp32_model():
    model = randomise(build(**BOTH), seed=1).eval()
    x = torch.randn(4, 3, 16, 24)
    with torch.no_grad():
        assert_close_bf16(fast_inference(model, pack=True)(x), model(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sdpa_with_the_locality_mask_matches_the_cpu():
    model = randomise(build(**BOTH, posemb="relative"), seed=1).eval()
    x = torch.randn(4, 3, 16, 24)
    with torch.no_grad():
        ref = model(x)
        gpu = copy.deepcopy(model).cuda()
        torch.testing.assert_close(gpu(x.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)
        with autocast("cuda", "bf16"):
            assert_close_bf16(gpu(x.cuda()).float().cpu(), ref)


@pytest.mark.parametrize("training", [False, True])
def test_compile_sees_one_graph_and_trains_to_the_same_gradients(training):
    import torch._dynamo as dynamo
    model = randomise(build(**BOTH, patch_dropout=0.25 if training else 0.0)).train(training)
    x = torch.randn(2, 3, 16, 24)
    dynamo.reset()
    explanation = dynamo.explain(model)(x)
    assert (explanation.graph_count, explanation.break_reasons) == (1, [])
    if training:
        twin = copy.deepcopy(model)
        torch.manual_seed(0)
        model(x).square().sum().backward()
        torch.manual_seed(0)
        compile_model(twin, backend="aot_eager")(x).square().sum().backward()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)


# ---- combinations and refusals ------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    dict(), dict(classifier="gap"), dict(classifier="map", reg_tokens=2), dict(posemb="learned_2d"),
    dict(posemb="sincos_2d", classifier="gap", class_token=True), dict(posemb="relative"), dict(posemb="none"),
    dict(patch_dropout=0.5, reg_tokens=1), dict(distill_token=True, layer_scale=0.1), dict(in_chans=1),
])
def test_spt_and_lsa_combine_with_the_other_settings(overrides):
    model = build(**BOTH, **overrides).train()
    x = torch.randn(2, model.config.in_chans, 16, 24)
    out = sum(model.forward_heads(x)) if model.config.distill_token else model(x)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3)


def test_only_spt_or_only_lsa_is_a_model_too():
    from vitlab.models.vit import PatchEmbedding
    assert build(patch_embed="spt").blocks[0].attn.temperature is None
    assert isinstance(build(attention="lsa").patch_embed, PatchEmbedding)


def test_a_study_run_takes_the_settings_as_overrides():
    from vitlab.studies.core import TINY_VIT, fashion_mnist_run
    from vitlab.studies.runner import config_hash
    from vitlab.studies.core import Run
    from vitlab.training.config import from_dict, validate
    plain = fashion_mnist_run(overrides=TINY_VIT, steps=2)
    small_data = fashion_mnist_run(overrides={**TINY_VIT, **BOTH}, steps=2)
    cfg = validate(from_dict({**small_data, "run_dir": "run"}), check_paths=False)
    assert cfg.model.overrides["patch_embed"] == "spt" and cfg.model.overrides["attention"] == "lsa"
    assert config_hash(Run("a", small_data, {})) != config_hash(Run("a", plain, {}))


@pytest.mark.parametrize("overrides, message", [
    (dict(patch_embed="spt", patch_size=1, image_size=16), "patch_embed 'spt' needs patch_size >= 2"),
    (dict(patch_embed="conv"), "patch_embed must be one of 'linear', 'spt', not 'conv'"),
    (dict(attention="local"), "attention must be one of 'full', 'axial', 'lsa', not 'local'"),
])
def test_impossible_settings_are_one_line(overrides, message):
    with pytest.raises(ValueError, match=message):
        model_config("ViT-Ti/16", **{**SMALL, **overrides})


def test_spt_on_a_hybrid_is_refused_naming_the_stem():
    with pytest.raises(ValueError, match=r"patch_embed 'spt' cannot be combined with a hybrid's ResNet stem"):
        model_config("R50+ViT-B/16", patch_embed="spt")


# ---- counted, saved, loaded, resampled ----------------------------------------------------------------
@pytest.mark.parametrize("overrides", [dict(patch_embed="spt"), dict(attention="lsa"), dict(BOTH, posemb="relative")])
def test_flops_and_parameters_are_counted(overrides):
    model = build(**overrides).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.forward_head(model.forward_features(torch.randn(1, 3, 16, 24), return_attention=True)[0])
    assert count_flops(model.config) == counter.get_total_flops()
    plain, cfg = count_parameters("ViT-Ti/16", **SMALL), model.config
    spt = 2 * 5 * 3 * 16 + 4 * (3 * 16) * 16 if cfg.patch_embed == "spt" else 0  # the LayerNorm, 4 more copies
    lsa = 2 * 2 if cfg.attention == "lsa" else 0  # a temperature per head and layer
    relative = count_parameters("ViT-Ti/16", **SMALL, posemb="relative") - plain if cfg.posemb == "relative" else 0
    assert count_parameters("ViT-Ti/16", **SMALL, **overrides) == plain + spt + lsa + relative


def test_vitlab_models_lists_the_settings(capsys):
    assert main(["models", "--filter", "ViT-Ti/16", "--set", "patch_embed=spt", "--set", "attention=lsa",
                 "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["ViT-Ti/16"]["gflops_224"] * 1e9 == count_flops(model_config("ViT-Ti/16", **BOTH))
    assert rows["ViT-Ti/16"]["params"] == count_parameters("ViT-Ti/16", **BOTH)
    assert count_flops(model_config("ViT-Ti/16", **BOTH)) > count_flops(model_config("ViT-Ti/16"))


def test_save_load_round_trip_and_resampling_to_another_size(tmp_path):
    model = randomise(build(**BOTH)).eval()
    path = vitlab.save_pretrained(model, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())["config"]
    assert config["patch_embed"] == "spt" and config["attention"] == "lsa"
    loaded = vitlab.load_pretrained(path).eval()
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    bigger = vitlab.load_pretrained(path, image_size=(24, 32)).eval()  # SPT has no grid; the position table does
    assert bigger.pos_embed.shape == (1, 1 + 6 * 8, 16)
    assert torch.equal(bigger.patch_embed.proj.weight, model.patch_embed.proj.weight)
    with torch.no_grad():
        assert bigger(torch.randn(2, 3, 24, 32)).shape == (2, 3)
    dynamic = build(**BOTH, dynamic_image_size=True).eval()
    with torch.no_grad():
        assert dynamic(torch.randn(1, 3, 20, 12)).shape == (1, 3)


def test_other_formats_and_a_new_patch_size_refuse_spt_and_lsa(tmp_path, capsys):
    path = vitlab.save_pretrained(build(**BOTH), tmp_path / "m")
    for to, name in (("timm", "m.safetensors"), ("hf", "hf"), ("npz", "m.npz")):
        assert main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / name), "--to", to]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("shifted patch tokens" in err or "lsa" in err), err
    assert main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "v"), "--to", "vitlab"]) == 0
    with pytest.raises(vitlab.checkpoints.CheckpointError, match="linear patch embedding"):
        vitlab.load_pretrained(path, patch_size=2)


def test_onnx_export_computes_the_same(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from vitlab.checkpoints.onnx import export_onnx
    model = randomise(build(**BOTH, posemb="sincos_2d"), seed=2).eval()
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")))
    x = torch.randn(2, 3, 16, 24)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-4)


# ---- trained, inspected, refused through the CLI --------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of `vitlab train` with both settings passed as `--set model.overrides...`, as a study passes them."""
    root = tmp_path_factory.mktemp("small-data")
    config = ts.write_config(root / "c.yaml", ts.tiny_config(root / "run", train={"steps": 16, "checkpoint_every": 16}))
    assert main(["train", str(config), "--set", "model.overrides.patch_embed=spt",
                 "--set", "model.overrides.attention=lsa"]) == 0
    return root


def test_training_lowers_the_loss_and_learns_the_temperature(trained):
    records = [json.loads(line) for line in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    model = vitlab.load_pretrained(trained / "run")
    assert model.config.patch_embed == "spt" and model.config.attention == "lsa"
    assert not torch.equal(model.blocks[0].attn.temperature.detach(), torch.full((2,), 4.0))


def test_inspect_draws_an_spt_lsa_model(trained, tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray((torch.rand(16, 16) * 255).to(torch.uint8).numpy()).save(image)
    out = tmp_path / "out"
    assert main(["inspect", "--checkpoint", str(trained / "run"), str(image), "--out", str(out), "--no-progress"]) == 0
    for name in ("rollout.png", "attention_heads.png", "attention_distance.png", "embedding_filters.png"):
        assert (out / name).is_file(), name


def test_a_wrong_combination_through_the_cli_is_one_line_and_exit_2(trained, capsys):
    config = str(trained / "c.yaml")
    assert main(["train", config, "--check", "--set", "model.overrides.patch_embed=spt",
                 "--set", "model.overrides.attention=lsa"]) == 0
    capsys.readouterr()
    assert main(["train", config, "--check", "--set", "model.name=R50+ViT-B/16",
                 "--set", "model.overrides.patch_embed=spt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "patch_embed 'spt' cannot be combined with a hybrid" in err, err
