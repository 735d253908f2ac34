"""benchmarks/gpu_check.sh on a machine without a GPU: one line, exit 0; with a GPU its torch cannot see: exit 1."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(tmp_path, **env):
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "gpu_check.md")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


@needs_bash
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    no_gpu = {} if shutil.which("nvidia-smi") is None else {"GPU_CHECK_NVIDIA_SMI": str(tmp_path / "absent")}
    proc = run(tmp_path, **no_gpu)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and "no CUDA GPU" in proc.stdout and proc.stderr == ""
    assert not (tmp_path / "gpu_check.md").exists()


@needs_bash
@pytest.mark.skipif(torch.cuda.is_available(), reason="its torch sees a GPU")
def test_a_gpu_that_torch_cannot_see_fails_the_check(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: a GPU (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    proc = run(tmp_path, GPU_CHECK_NVIDIA_SMI=str(fake), GPU_CHECK_PYTHON=sys.executable)
    assert proc.returncode == 1
    assert "does not see the GPU" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12)])
def test_mfu_takes_the_peak_of_the_card_not_of_its_family(monkeypatch, name, peak):
    from vitlab.bench import datasheet_peak

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert datasheet_peak(torch.device("cuda")) == (name, peak)
