"""The fast paths compute what the plain model computes, and torch.compile sees one graph, never a break.

Tolerances: fp32 paths agree to 1e-5. bf16 paths (8-bit mantissa) are held to a maximum absolute error of
5% of the fp32 output's RMS (measured: 1-3% on these tiny models), the same bound autocast itself meets.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch
import torch._dynamo as dynamo
import torch.nn.functional as F
from torch import nn

import vitlab
from vitlab.cli import main as cli_main
from vitlab.bench import peak_step_memory
from vitlab.models.fast import PackedLinear, compile_model, cuda_graph_inference, fast_inference, onednn_bf16_available
from vitlab.runtime import autocast
from vitlab.training.config import OptimConfig
from vitlab.training.optim import make_adamw, param_groups

from conftest import load_benchmark, tiny

BF16_TOLERANCE = 0.05  # of the fp32 output's RMS
needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16_available(), reason="no oneDNN bf16 on this CPU")


def small(**overrides):
    return vitlab.create_model("ViT-B/16", **tiny(patch_size=8, **overrides))


def assert_close_bf16(out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out.float() - ref).abs().max() / ref.pow(2).mean().sqrt()
    assert err < BF16_TOLERANCE, f"bf16 error {err:.4f} of the output RMS exceeds {BF16_TOLERANCE}"


# ---- torch.compile: one graph ------------------------------------------------------------------------
def graph_breaks(fn, *args, **kwargs):
    dynamo.reset()
    explanation = dynamo.explain(fn)(*args, **kwargs)
    return explanation.graph_count, [str(b.reason) for b in explanation.break_reasons]


@pytest.mark.parametrize("overrides, training, checkpointing", [
    ({}, False, False),
    ({}, True, False),
    ({}, True, True),
    (dict(classifier="gap", representation_size=16, dropout=0.1, attention_dropout=0.1, drop_path=0.1), True, False),
    (dict(gelu="tanh", qkv_bias=False), False, False),
])
def test_compile_sees_one_graph_without_breaks(overrides, training, checkpointing):
    model = small(**overrides).train(training)
    model.set_grad_checkpointing(checkpointing)
    graphs, breaks = graph_breaks(model, torch.randn(2, 3, 32, 32))
    assert (graphs, breaks) == (1, [])


def test_no_graph_break_under_bf16_autocast_or_when_returning_attention():
    model = small().eval()
    x = torch.randn(2, 3, 32, 32)
    with autocast("cpu", "bf16"):
        assert graph_breaks(model, x) == (1, [])
    assert graph_breaks(model.forward_features, x, return_attention=True) == (1, [])


def test_no_graph_break_with_resampled_position_embeddings():
    model = small(dynamic_image_size=True).eval()
    with torch.no_grad():
        assert graph_breaks(model, torch.randn(2, 3, 48, 48)) == (1, [])


def test_fullgraph_compile_trains_to_the_same_gradients():
    torch.manual_seed(0)
    model = small(drop_path=0.0).train()
    model.set_grad_checkpointing(True)
    twin = copy.deepcopy(model)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    F.cross_entropy(model(x), y).backward()
    compiled = compile_model(twin, backend="aot_eager")  # fullgraph=True: a break would raise
    F.cross_entropy(compiled(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_compile_model_freezes_weights_only_for_cpu_inference(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.append(kwargs) or model)
    model = small()
    compile_model(model)
    compile_model(model, inference=True)
    compile_model(model, inference=True, mode="max-autotune")
    assert seen[0]["options"] is None and seen[0]["fullgraph"] is True
    assert seen[1]["options"] == {"freezing": True}
    assert seen[2]["options"]["freezing"] is True and seen[2]["options"]["max_autotune"] is True


# ---- bf16 -------------------------------------------------------------------------------------------
@needs_onednn_bf16
@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_fast_inference_matches_the_fp32_model(gelu):
    model = small(gelu=gelu).eval()
    nn.init.normal_(model.head.weight, std=0.1)  # a zero head would make every output equal
    x = torch.randn(4, 3, 32, 32)
    fast = fast_inference(model)
    packed = [m for m in fast.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 4 * model.config.depth + 1  # qkv, proj, fc1, fc2 per block, and the head
    assert all(block.mlp.fc1.activation == "gelu" for block in fast.model.blocks)
    with torch.no_grad():
        ref = model(x)
        out = fast(x)
        tokens = fast.forward_features(x)
        assert_close_bf16(out, ref)
        assert_close_bf16(tokens, model.forward_features(x))
        assert_close_bf16(fast.forward_head(tokens), ref)
    assert out.dtype == torch.float32 and model.head.weight.dtype == torch.float32  # the original untouched


@needs_onednn_bf16
def test_packed_linear_keeps_leading_dimensions():
    linear = nn.Linear(16, 24)
    x = torch.randn(2, 5, 16)
    out = PackedLinear(linear, "gelu", "none")(x.bfloat16())
    assert out.shape == (2, 5, 24)
    assert_close_bf16(out, F.gelu(linear(x)).detach())


def test_fp32_fast_inference_is_the_same_function():
    model = small().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast_inference(model, "fp32")(x), model(x), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_training_follows_fp32_gradients():
    model = small().train()
    nn.init.normal_(model.head.weight, std=0.1)
    twin = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    with autocast("cpu", "bf16"):
        loss = F.cross_entropy(twin(x), y)
    loss.backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert q.grad.dtype == torch.float32
        cos = F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.98, f"{name}: bf16 gradient has cosine {cos:.3f} with the fp32 one"


def test_autocast_fp32_changes_nothing():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        autocast("cpu", "int8")


# ---- optimiser --------------------------------------------------------------------------------------
def test_make_adamw_is_fused_and_decays_only_matrices():
    model = small()
    opt = make_adamw(model, lr=1e-3, weight_decay=0.1)
    assert opt.defaults["fused"] is True
    by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_decay) == {0.1, 0.0}
    decay, no_decay = by_decay[0.1], by_decay[0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay} >= {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"}
    assert all(p.ndim >= 2 for p in decay) and "pos_embed" not in {names[id(p)] for p in decay}


def test_fused_adamw_steps_like_the_unfused_one():
    model = small()
    twin = copy.deepcopy(model)
    fused = make_adamw(model, lr=1e-2, weight_decay=0.1)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(twin, OptimConfig(weight_decay=0.1))]
    plain = torch.optim.AdamW(groups, lr=1e-2, fused=False, foreach=False)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        for p, q in zip(model.parameters(), twin.parameters()):  # the same gradients: only the kernels differ
            q.grad = p.grad.clone()
        for opt in (fused, plain):
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=name)


# ---- CUDA graphs ------------------------------------------------------------------------------------
def test_cuda_graph_refuses_a_cpu_model():
    with pytest.raises(ValueError, match="needs a CUDA model"):
        cuda_graph_inference(small(), torch.randn(1, 3, 32, 32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_the_model():
    model = small().cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    run = cuda_graph_inference(model, x)
    with torch.no_grad():
        for _ in range(2):
            x2 = torch.randn_like(x)
            torch.testing.assert_close(run(x2), model(x2), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="recorded for"):
        run(torch.randn(2, 3, 32, 32, device="cuda"))


# ---- measuring --------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_peak_step_memory_sees_a_step_allocation():
    def step():
        t = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.05)
        return t

    assert peak_step_memory(step, torch.device("cpu")) >= 48 * 2**20


def test_bench_command_reports_both_tasks(capsys):
    argv = ["bench", "--model", "ViT-Ti/16", "--image-size", "32", "--batch-size", "2", "--rounds", "1",
            "--warmup", "0", "--json"]
    assert cli_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] == vitlab.count_parameters("ViT-Ti/16", image_size=32)
    assert set(report["results"]) == {"inference", "train"}
    assert report["peak_source"] == "fp32 matmul" and report["peak_flops"] > 0
    for r in report["results"].values():
        assert r["images_per_second"] > 0 and 0 < r["utilisation"]


def test_benchmark_rewrites_only_its_own_block(tmp_path):
    bench = load_benchmark("throughput")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Accuracy\nkeep me\n\n## Throughput\nnotes stay\n\n## Later\nme too\n")
    cpu = torch.device("cpu")
    bench.write_benchmarks_md(md, cpu, "first table")
    bench.write_benchmarks_md(md, cpu, "second table")
    text = md.read_text()
    assert "second table" in text and "first table" not in text
    assert text.index("notes stay") < text.index("second table") < text.index("## Later")
    assert "keep me" in text and "me too" in text and text.count("<!-- throughput:cpu:start -->") == 1


def test_bf16_cpu_attention_takes_the_explicit_path_and_matches_sdpa(monkeypatch):
    from vitlab.models import vit
    attn = small().blocks[0].attn.eval()
    x = torch.randn(2, 17, 32)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(vit.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        ref, none = attn(x)
        assert calls == [1] and none is None  # fp32 keeps the fused kernel: numerics unchanged
        with autocast("cpu", "bf16"):
            out, none = attn(x)
        assert calls == [1] and none is None and out.dtype == torch.bfloat16
        assert_close_bf16(out, ref)
        bf16_out, _ = copy.deepcopy(attn).bfloat16()(x.bfloat16())
        assert_close_bf16(bf16_out, ref)
