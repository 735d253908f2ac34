"""The training engine across processes: SIGKILL/SIGTERM mid-run, and 2-process gloo under torchrun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tracking_support as tks
import training_support as ts

ENTRY = Path(ts.__file__)


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ENTRY.parents[1] / "src")}


def losses_in(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def assert_backend_stopped(proc: subprocess.CompletedProcess, ranks: int) -> None:
    """Every rank's process group (its worker threads and sockets) is gone once `train` returns."""
    lines = re.findall(r"threads at exit: \[[^\]]*\]", proc.stderr)
    assert len(lines) == ranks, proc.stderr[-4000:]
    if sys.platform == "linux":
        assert not [line for line in lines if "gloo" in line], lines


def run_cli(config: Path, *extra, torchrun: int = 0) -> subprocess.CompletedProcess:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}",
               str(ENTRY), "train", str(config), *extra]
    else:
        cmd = [sys.executable, str(ENTRY), "train", str(config), *extra]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def slow_config(tmp_path: Path, name: str, steps: int = 30) -> Path:
    raw = ts.tiny_config(tmp_path / name, train={"steps": steps, "checkpoint_every": 3, "keep_checkpoints": 3},
                         model={"overrides": dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2,
                                                  dropout=0.1)})
    return ts.write_config(tmp_path / f"{name}.yaml", raw)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not list((run_dir / "checkpoints").glob("step-*[0-9]/trainer.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def in_process_losses(config: Path) -> list[float]:
    """The uninterrupted run, trained in this process on one thread, as the subprocesses train (an earlier test's
    command, e.g. `vitlab study --estimate`, may have set this process's thread count)."""
    from vitlab.training import load_config, train

    torch.set_num_threads(1)
    return train(load_config(config)).losses


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    expected = in_process_losses(slow_config(tmp_path, "reference"))
    config = slow_config(tmp_path, "killed")
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ENTRY), "train", str(config)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(run_dir, proc)
    time.sleep(0.3)  # into a later step, or the middle of writing a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if not p.name.endswith(".partial"))
    if done[-1].name.endswith("30"):
        pytest.skip("the run finished before the signal arrived (machine too fast for this test)")
    import safetensors.torch

    for ckpt in done:  # every complete checkpoint reads back
        torch.load(ckpt / "optimizer.pt", weights_only=True)
        safetensors.torch.load_file(ckpt / "model.safetensors")

    proc = run_cli(config)
    assert f"resuming from {done[-1]}" in proc.stdout
    assert not list((run_dir / "checkpoints").glob("*.partial"))
    assert losses_in(run_dir) == expected


@pytest.mark.slow
def test_two_gloo_processes_equal_one_and_resume_under_fsdp(tmp_path):
    single = ts.write_config(tmp_path / "single.yaml", ts.tiny_config(tmp_path / "single", train={"steps": 8}))
    double = ts.write_config(tmp_path / "double.yaml", ts.tiny_config(tmp_path / "double", train={"steps": 8},
                                                                      log={"to": ["tensorboard"]}))
    one = in_process_losses(single)
    assert_backend_stopped(run_cli(double, torchrun=2), ranks=2)
    two = losses_in(tmp_path / "double")
    assert len(one) == len(two) == 8
    assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-5, atol=1e-6), (one, two)
    summary = json.loads((tmp_path / "double/summary.json").read_text())
    assert summary["steps"] == 8 and summary["last_metric"] is not None
    for name in ("rank-0.pt", "rank-1.pt", "model.safetensors", "optimizer.pt"):
        assert (tmp_path / "double/checkpoints/step-00000008" / name).is_file()
    events = tmp_path / "double/tensorboard"
    assert len(list(events.glob("events.out.tfevents.*"))) == 1  # rank 0 logs, rank 1 does not
    tks.assert_same_series(tks.tensorboard_scalars(tks.tensorboard_run(events)), tmp_path / "double")
    final = json.loads((tmp_path / "double/final_eval.json").read_text())  # evaluated across both ranks
    assert final["num_samples"] == 64 and final["top1"] == pytest.approx(summary["last_metric"])

    import shutil

    shutil.rmtree(tmp_path / "double/checkpoints/step-00000008")  # the distributed run died after step 4
    # resume it sharded with FSDP2 (checkpoints hold full weights, so the strategy may change)
    proc = run_cli(double, "--set", "distributed.strategy=fsdp", torchrun=2)
    assert "resuming from" in proc.stdout and "(step 4/8)" in proc.stdout
    assert_backend_stopped(proc, ranks=2)  # DTensor's caches keep FSDP2's device mesh alive
    resumed = losses_in(tmp_path / "double")
    assert resumed[:4] == two[:4] and len(resumed) == 8
    assert torch.allclose(torch.tensor(resumed), torch.tensor(two), rtol=1e-5, atol=1e-6), (resumed, two)
    # the same TensorBoard run continues: steps 5-8 of the first session are replaced by the resumed ones
    tks.assert_same_series(tks.tensorboard_scalars(tks.tensorboard_run(events)), tmp_path / "double")


# (where the signal arrives, which signal): each leaves a run that the same command finishes without training
# it again; SIGTERM/SIGINT are held until the run's end is written, SIGKILL finds the checkpoint written before
# the final evaluation
END_SIGNALS = [("during-final-eval", "SIGTERM"), ("before-final-save", "SIGKILL"), ("during-final-save", "SIGINT"),
               ("after-final-save", "SIGTERM")]
END_STEPS = 6


def end_config(tmp_path: Path, name: str) -> Path:
    raw = ts.tiny_config(tmp_path / name, train={"steps": END_STEPS, "checkpoint_every": 100})
    return ts.write_config(tmp_path / f"{name}.yaml", raw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from vitlab.training import load_config, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("uninterrupted")
    return train(load_config(end_config(root, "run"))), losses_in(root / "run")


@pytest.mark.slow
@pytest.mark.parametrize("point,signame", END_SIGNALS)
def test_a_signal_at_the_end_of_a_run_loses_no_training(tmp_path, point, signame, uninterrupted):
    from vitlab.training import load_config, train

    config, run_dir = end_config(tmp_path, "run"), tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ENTRY.with_name("signal_at_end.py")), point, signame, str(config)],
                          env=env(), capture_output=True, text=True, timeout=300)
    if signame != "SIGKILL":  # held: the run writes its end, then stops
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    torch.set_num_threads(1)
    again = train(load_config(config))
    reference, reference_losses = uninterrupted
    assert again.resumed_from == END_STEPS, proc.stdout[-2000:] + proc.stderr[-4000:]  # not step 1 again
    assert again.last_metric == reference.last_metric
    assert losses_in(run_dir) == reference_losses
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "eval_accuracy" in r]) == 1  # the final evaluation, recorded once
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == END_STEPS
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step-{END_STEPS:08d}"]
