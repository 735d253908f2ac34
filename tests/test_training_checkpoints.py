"""Nothing lost (issue 13 §4): a crash at any point of a save, a damaged newest checkpoint, a second trainer on
the same run directory, a full disk, and a finished run started again."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import training_support as ts
from vitlab.checkpoints import CheckpointError
from vitlab.training import Trainer, from_dict, train
from vitlab.training import checkpointing
from vitlab.training.checkpointing import CheckpointWriteError, DamagedCheckpointWarning, RunDirLocked, RunLock
from vitlab.training.config import validate


def config(tmp_path, **train_settings):
    settings = {"steps": 8, "checkpoint_every": 4, "keep_checkpoints": 2, **train_settings}
    return validate(from_dict(ts.tiny_config(tmp_path / "run", train=settings)))


def step_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


class Crash(BaseException):
    """kill -9 stand-in: nothing catches it, nothing after it runs."""


def file_operations(monkeypatch, crash_at: int | None) -> list[str]:
    """Count (and at `crash_at`, crash) the renames and deletions a save makes."""
    done = []
    real_rename, real_rmtree = Path.rename, shutil.rmtree

    def step(what):
        if crash_at is not None and len(done) == crash_at:
            raise Crash(what)
        done.append(what)

    def rename(self, target):
        step(f"rename {self.name} -> {Path(target).name}")
        return real_rename(self, target)

    def rmtree(path, *args, **kwargs):
        step(f"rmtree {Path(path).name}")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return done


def test_a_crash_at_any_point_of_saving_a_finished_step_again_keeps_a_complete_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, keep_checkpoints=1)
    train(cfg)
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "run", pristine)
    with monkeypatch.context() as m:  # how many renames / deletions saving step 8 again makes
        operations = file_operations(m, None)
        Trainer(cfg).save()
    assert any(op.startswith("rename step-00000008 ") for op in operations)
    for crash_at in range(len(operations)):
        shutil.rmtree(tmp_path / "run")
        shutil.copytree(pristine, tmp_path / "run")
        trainer = Trainer(cfg)
        with monkeypatch.context() as m:
            file_operations(m, crash_at)
            with pytest.raises(Crash):
                trainer.save()
        restarted = Trainer(cfg)  # start-up recovery, then the choice of checkpoint
        assert restarted.resume_path is not None and restarted.step == 8, operations[crash_at]
        assert step_names(tmp_path / "run") == ["step-00000008"], operations[crash_at]
        assert checkpointing.damage(restarted.resume_path) is None


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt", "rank-0.pt"])
@pytest.mark.parametrize("manifest", [True, False])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, victim, manifest):
    cfg = config(tmp_path)
    train(cfg)
    newest = tmp_path / "run/checkpoints/step-00000008"
    if not manifest:  # a checkpoint written before manifests: every file is read whole instead
        for step in ("step-00000004", "step-00000008"):
            (tmp_path / "run/checkpoints" / step / "manifest.json").unlink()
    data = (newest / victim).read_bytes()
    (newest / victim).write_bytes(data[: len(data) // 2])
    with pytest.warns(DamagedCheckpointWarning, match=f"step-00000008 is damaged: .*{victim}"):
        trainer = Trainer(cfg)
    assert trainer.resume_path.name == "step-00000004" and trainer.step == 4
    result = trainer.fit()  # and the run goes on from there
    assert result.steps == 8 and result.resumed_from == 4


def test_a_flipped_byte_is_caught_by_the_manifest(tmp_path):
    cfg = config(tmp_path)
    train(cfg)
    weights = tmp_path / "run/checkpoints/step-00000008/optimizer.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(DamagedCheckpointWarning, match="optimizer.pt does not match its sha256"):
        assert Trainer(cfg).step == 4


def test_when_every_checkpoint_is_damaged_the_run_is_refused_not_restarted(tmp_path):
    cfg = config(tmp_path)
    train(cfg)
    for step in ("step-00000004", "step-00000008"):
        (tmp_path / "run/checkpoints" / step / "model.safetensors").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedCheckpointWarning)
        with pytest.raises(CheckpointError, match="no checkpoint in .* reads back whole"):
            Trainer(cfg)
    assert step_names(tmp_path / "run") == ["step-00000004", "step-00000008"]  # nothing deleted


def test_a_second_trainer_on_the_same_run_directory_is_refused(tmp_path):
    cfg = config(tmp_path)
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirLocked, match=f"in use by another trainer \\(pid {os.getpid()}\\)"):
            train(cfg)
        with pytest.raises(RunDirLocked):  # flock is per open file: a second lock in this process conflicts too
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run/checkpoints").exists()  # the refused trainer touched nothing
    assert train(cfg).steps == 8  # released: the run goes ahead


def test_the_lock_of_another_process_names_it_and_a_dead_ones_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vitlab.training.checkpointing import RunLock; "
         "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"pid {holder.pid}\\)"):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs; the lock file (with the dead pid) stays behind
        holder.wait()
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)
    with RunLock(run_dir):
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")])
def test_a_failed_write_is_one_clear_error_and_the_earlier_checkpoints_stay(tmp_path, monkeypatch, failure):
    cfg = config(tmp_path)
    train(cfg)
    trainer = Trainer(cfg)

    def fail(obj, path):
        raise failure

    monkeypatch.setattr(checkpointing.torch, "save", fail)  # how torch.save fails on a full disk: a RuntimeError
    trainer.step = 9
    with pytest.raises(CheckpointWriteError) as caught:
        trainer.save()
    error = caught.value
    assert error.filename.endswith("step-00000009.partial/optimizer.pt")
    expected = "No space left on device" if isinstance(failure, OSError) else "torch.save failed: "
    assert expected in str(error) and "earlier checkpoints are intact" in str(error)
    assert step_names(tmp_path / "run") == ["step-00000004", "step-00000008"]  # no .partial left either
    assert all(checkpointing.damage(p) is None for p in checkpointing.list_checkpoints(tmp_path / "run"))


def test_running_a_finished_run_again_changes_nothing(tmp_path, capsys):
    cfg = config(tmp_path)
    first = train(cfg)
    run = tmp_path / "run"
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "summary.json")}
    checkpoint_files = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*")}
    again = train(cfg)
    assert again.steps == 8 and again.last_metric == first.last_metric
    assert again.best_metric == first.best_metric
    assert {name: (run / name).read_bytes() for name in before} == before  # no second evaluation record
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*")} == checkpoint_files
    assert "nothing to do" in capsys.readouterr().out
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [8]


def test_a_checkpoint_of_an_older_trainer_resumes_its_metrics():
    """trainer.json written before the metric was named best_metric (it may be a loss) reads as the new names."""
    from vitlab.training.trainer import renamed_state

    old = {"best_accuracy": 0.5, "last_accuracy": 0.4, "last_accuracy_ema": None, "skipped_steps": 1}
    assert renamed_state(old) == {"best_metric": 0.5, "last_metric": 0.4, "last_metric_ema": None, "skipped_steps": 1}
