"""Run a study's grid: every run an ordinary run directory; finished runs kept, an interrupted one resumed.

Layout of a study's output directory:
    OUT/runs/NAME/            the run directory `vitlab train` makes (checkpoints, metrics.jsonl, ...)
    OUT/runs/NAME/study_result.json   written last, atomically: its presence means "done"
    OUT/results.csv, OUT/<study>.png, OUT/REPORT.md

`--jobs N` runs N runs at once, each in its own process with the CPU threads split between them (or one GPU
each where there are enough). Under torchrun every process takes its share of the runs, one per device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import VitlabError
from ..fileio import atomic_write_text
from .core import Run, Study

RESULT_FILE = "study_result.json"
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


class StudyError(VitlabError):
    """A run of the study failed; the message names it and where its log is."""


def run_dir_of(out: Path, run: Run) -> Path:
    return out / "runs" / run.name


def read_result(out: Path, run: Run) -> dict | None:
    path = run_dir_of(out, run) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cut short: run it again (training resumes from its checkpoint)


def execute(run: Run, out: Path) -> dict:
    """Train (or resume) one run in this process, measure it, and record the result."""
    run_dir = run_dir_of(out, run)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if run.kind == "throughput":
        from .throughput import measure

        metrics = measure(**run.config)
    else:
        metrics = train_and_measure(run, run_dir)
    result = {"run": run.name, **run.tags, **metrics, "run_dir": f"runs/{run.name}",
              "study_wall_s": time.perf_counter() - start}
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def train_and_measure(run: Run, run_dir: Path) -> dict:
    from ..training import train
    from ..training.config import from_dict, validate
    from .measure import run_metrics

    cfg = validate(from_dict({**run.config, "run_dir": str(run_dir)}))
    cfg.train.plot = False  # one figure per study, not one per run
    result = train(cfg)
    if result.interrupted_by is not None:
        raise KeyboardInterrupt(f"run {run.name} interrupted; run the study again to resume it")
    return run_metrics(run_dir, run.config, fewshot=run.fewshot)


def run_study(study: Study, size: str, out: Path, *, jobs: int = 1, only: str | None = None, data: str | None = None,
              log=print) -> list[dict]:
    """Run whatever of the grid is not done yet; return every run's result row (in grid order).

    `data` replaces the data set of every training run (the paper size's placeholder, for instance).
    """
    runs = study.runs(size)
    if data:
        for r in runs:
            if r.kind == "train":
                r.config["data"]["dataset"] = data
    if only is not None:
        runs = [r for r in runs if r.name == only]
        if not runs:
            raise StudyError(f"study {study.name} ({size}) has no run named {only!r}")
    pending = [r for r in runs if read_result(out, r) is None]
    done = len(runs) - len(pending)
    if done and only is None:
        log(f"{done} of {len(runs)} runs already finished in {out}; running the other {len(pending)}")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        run_share(pending[rank::world], study, size, out, rank=rank, world=world, data=data, log=log)
    elif jobs > 1 and len(pending) > 1:
        run_children(pending, study, size, out, jobs=jobs, data=data, log=log)
    else:
        for i, run in enumerate(pending, 1):
            log(f"[{done + i}/{len(runs)}] {run.name}")
            execute(run, out)
    missing = [r.name for r in runs if read_result(out, r) is None]
    if missing:
        raise StudyError(f"runs without a result: {', '.join(missing)} (see their study.log in {out / 'runs'})")
    return [read_result(out, r) for r in runs]


def run_children(runs: list[Run], study: Study, size: str, out: Path, *, jobs: int, rank: int = 0,
                 data: str | None = None, log=print):
    """Each run in a child `vitlab study ... --only RUN`, `jobs` at a time, CPU threads (or GPUs) shared out."""
    import torch

    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    queue, active, failed = list(runs), [], []
    while queue or active:
        while queue and len(active) < jobs:
            run = queue.pop(0)
            slot = rank if jobs == 1 else len(active)
            env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
            env.update(OMP_NUM_THREADS=str(threads), VITLAB_STUDY_THREADS=str(threads))
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(int(os.environ.get("LOCAL_RANK", slot)) % gpus)
            run_dir_of(out, run).mkdir(parents=True, exist_ok=True)
            log_file = open(run_dir_of(out, run) / "study.log", "a")
            cmd = [sys.executable, "-m", "vitlab", "study", study.name, "--size", size, "--out", str(out),
                   "--only", run.name, "--no-report"] + (["--data", data] if data else [])
            active.append((run, subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT), log_file))
            log(f"started {run.name} ({threads} threads" + (f", GPU {env['CUDA_VISIBLE_DEVICES']})" if gpus else ")"))
        time.sleep(0.5)
        for item in list(active):
            run, proc, log_file = item
            if proc.poll() is None:
                continue
            active.remove(item)
            log_file.close()
            if proc.returncode != 0:
                failed.append(run.name)
            log(f"{'finished' if proc.returncode == 0 else 'FAILED'} {run.name}")
    if failed:
        raise StudyError(f"runs failed: {', '.join(failed)} (their output is in {out / 'runs'}/NAME/study.log)")


def run_share(runs: list[Run], study: Study, size: str, out: Path, *, rank: int, world: int,
              data: str | None = None, log=print, poll_s: float = 2.0) -> None:
    """Under torchrun: run this process's share of the runs (on its own device), then wait for the others'.

    Each process leaves a marker saying whether its share succeeded, so none waits for a failed one forever.
    """
    marker = out / f".rank-{rank}-of-{world}"
    for stale in out.glob(f".rank-{rank}-of-{world}.*"):
        stale.unlink()
    try:
        run_children(runs, study, size, out, jobs=1, rank=rank, data=data, log=log)
    except StudyError as e:
        atomic_write_text(marker.with_suffix(".failed"), str(e) + "\n")
        raise
    atomic_write_text(marker.with_suffix(".done"), "")
    while True:
        failed = sorted(out.glob(f".rank-*-of-{world}.failed"))
        if failed:
            raise StudyError(f"another process's runs failed: {failed[0].read_text().strip()}")
        if len(list(out.glob(f".rank-*-of-{world}.done"))) == world:
            return
        time.sleep(poll_s)
