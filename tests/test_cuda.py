"""The GPU paths, each against the CPU fp32 model: fast paths, SDPA's flash and memory-efficient kernels, a bf16
training step, `train.compile`, a run that resumes, serving, and `vitlab study --jobs` on one GPU.

Marked `cuda` (benchmarks/gpu_check.sh runs `pytest -m cuda`); every test skips where CUDA is not available.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import training_support as ts
import vitlab
from conftest import tiny

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

BF16_TOLERANCE = 0.05  # of the fp32 output's RMS, as in test_fast_paths.py
ENTRY = Path(__file__).resolve().parent / "training_support.py"


@pytest.fixture(autouse=True)
def full_fp32():
    """fp32 on the GPU as on the CPU: cuDNN's convolutions default to TF32 (a 10-bit mantissa)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def model_and_input(**overrides):
    """A small ViT with every weight random (heads included) and flash-attention-friendly heads (64 wide)."""
    torch.manual_seed(0)
    model = vitlab.create_model("ViT-B/16", **tiny(patch_size=8, width=128, num_heads=2, mlp_dim=256, **overrides))
    torch.nn.init.normal_(model.head.weight, std=0.2)
    return model.eval(), torch.randn(8, 3, 32, 32)


def assert_close_bf16(out: torch.Tensor, ref: torch.Tensor) -> None:
    err = (out.float().cpu() - ref).abs().max() / ref.pow(2).mean().sqrt()
    assert err < BF16_TOLERANCE, f"bf16 error {err:.4f} of the output RMS exceeds {BF16_TOLERANCE}"


def reference(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"])
def test_sdpa_kernels_match_the_cpu_reference(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, x = model_and_input()
    ref = reference(model, x)
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad(), sdpa_kernel(getattr(SDPBackend, backend)):  # only that kernel, or an error
        if backend != "FLASH_ATTENTION":  # flash has no fp32 kernel
            torch.testing.assert_close(gpu(x.cuda()).cpu(), ref, rtol=2e-3, atol=2e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert_close_bf16(gpu(x.cuda()), ref)


def test_attention_with_a_bias_runs_the_memory_efficient_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, x = model_and_input(posemb="relative")
    ref = reference(model, x)
    with torch.no_grad(), sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        assert_close_bf16(copy.deepcopy(model).cuda()(x.cuda()), ref)


def test_fast_paths_match_the_cpu_reference():
    from vitlab.models.fast import compile_model, cuda_graph_inference, fast_inference

    model, x = model_and_input()
    ref = reference(model, x)
    gpu, xg = copy.deepcopy(model).cuda(), x.cuda()
    with torch.no_grad():
        assert_close_bf16(fast_inference(gpu, "bf16")(xg), ref)
        torch.testing.assert_close(compile_model(copy.deepcopy(gpu), inference=True)(xg).cpu(), ref,
                                   rtol=2e-3, atol=2e-3)
        assert_close_bf16(cuda_graph_inference(gpu, xg, "bf16")(xg), ref)


def test_bf16_training_step_follows_the_fp32_gradients():
    from vitlab.runtime import autocast
    from vitlab.training.optim import make_adamw

    model, x = model_and_input()
    model.train()
    y = torch.arange(8) % model.num_classes
    gpu = copy.deepcopy(model).cuda()
    F.cross_entropy(model(x), y).backward()
    optimizer = make_adamw(gpu, lr=1e-3)
    assert optimizer.defaults.get("fused")  # the fused CUDA kernel
    with autocast("cuda", "bf16"):
        loss = F.cross_entropy(gpu(x.cuda()), y.cuda())
    loss.backward()
    assert torch.isfinite(loss)
    for (name, p), q in zip(model.named_parameters(), gpu.parameters()):
        assert q.grad.dtype == torch.float32  # fp32 master weights and gradients
        cos = F.cosine_similarity(p.grad.flatten(), q.grad.cpu().flatten(), dim=0)
        assert cos > 0.98, f"{name}: the GPU bf16 gradient has cosine {cos:.3f} with the CPU fp32 one"
    before = [p.detach().clone() for p in gpu.parameters()]
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, gpu.parameters()) if b.grad.abs().sum() > 0)


def run_train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ENTRY), "train", str(config), *extra], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_compiled_bf16_training_on_the_gpu_resumes(tmp_path):
    """`vitlab train` with train.compile in bf16 on the GPU: 8 steps, then the same run extended to 12 resumes."""
    run_dir = tmp_path / "run"
    raw = ts.tiny_config(run_dir, train={"steps": 8, "compile": True, "precision": "bf16", "checkpoint_every": 4,
                                         "log_every": 1, "plot": False})
    config = ts.write_config(tmp_path / "run.yaml", raw)
    run_train(config)
    proc = run_train(config, "--set", "train.steps=12")
    assert "resuming from" in proc.stdout and "step-00000008" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 12
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and bool(torch.isfinite(torch.tensor(losses)).all())


def test_serving_on_the_gpu_answers_like_the_cpu(tmp_path):
    from serving_support import tiny_checkpoint
    from vitlab.serving.engine import TorchEngine

    ckpt = tiny_checkpoint(tmp_path / "ckpt", width=64, mlp_dim=128)
    x = torch.randn(6, 3, 16, 16)
    cpu = TorchEngine(ckpt, device="cpu", precision="fp32").run(x).probabilities
    for precision in ("fp32", "bf16"):
        engine = TorchEngine(ckpt, device="cuda", precision=precision)
        assert engine.device.type == "cuda" and engine.precision == precision
        got = engine.run(x).probabilities.float().cpu()
        assert (got - cpu).abs().max() < (1e-4 if precision == "fp32" else 0.05)


def test_study_jobs_hand_the_one_gpu_to_one_run_at_a_time(tmp_path):
    """`--jobs 2` on a one-GPU machine: one run at a time, each child seeing that GPU."""
    from vitlab.studies import get_study
    from vitlab.studies import runner as study_runner

    from vitlab.data import DataError, build_dataset

    try:
        build_dataset("fashion_mnist", "test", download=False)
    except DataError as e:
        pytest.skip(f"the pooling study trains on Fashion-MNIST, not found here ({str(e)[:80]})")
    study = get_study("pooling")
    runs = study.runs("quick")[:2]
    logs: list[str] = []
    study_runner.run_children(runs, study, "quick", tmp_path, jobs=2, log=logs.append)
    started = [m for m in logs if m.startswith("started")]
    gpus = torch.cuda.device_count()
    assert len(started) == 2 and all("GPU" in m for m in started), logs
    if gpus == 1:
        assert [m.split()[0] for m in logs] == ["started", "finished", "started", "finished"], logs
    assert all((tmp_path / "runs" / run.name / study_runner.RESULT_FILE).is_file() for run in runs)
