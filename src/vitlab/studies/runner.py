"""Run a study's grid: every run an ordinary run directory; finished runs kept, an interrupted one resumed.

Layout of a study's output directory:
    OUT/runs/NAME/            the run directory `vitlab train` makes (checkpoints, metrics.jsonl, ...)
    OUT/runs/NAME/study_run.json      the hash of the run's configuration, written before it trains
    OUT/runs/NAME/study_result.json   written last, atomically: its presence (with the same hash) means "done"
    OUT/results.csv, OUT/<study>.png, OUT/REPORT.md

A run's result counts only for the configuration it was trained with: when the grid changes (a budget, a
learning rate), a run whose hash differs is trained again, and its old directory is moved to
OUT/runs/.replaced/. Results are also kept in a cache shared by the studies written side by side
(CACHE/HASH.json, by default OUT/../study-cache), so a configuration that another study already trained is
not trained twice.

A finished run's results travel without its checkpoints: `export_results` copies each run's KEPT_FILES to
DIR/NAME/ (docs/studies/STUDY/runs/ keeps them for the default size), and `--known-results DIR` takes a run
from there when its configuration hash matches, so another machine trains only the runs not yet finished.

`--jobs N` runs N runs at once, longest first, each in its own process with the CPU threads split between them
(or one GPU each where there are enough). Under torchrun every process takes its share of the runs, one per
device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ..errors import VitlabError
from ..fileio import atomic_write_text
from ..runtime import launch_env
from .core import Run, Study
from .tracking import with_tracking

RESULT_FILE = "study_result.json"
HASH_FILE = "study_run.json"
CHILD_LOG = "study.log"  # what a child run printed (--jobs)
KEPT_FILES = ("config.yaml", "metrics.jsonl", "summary.json", RESULT_FILE)  # a run without its checkpoints
# What a run measures after training: bump it when a measurement changes, so that finished runs are measured
# again (from their checkpoints, without training again) instead of keeping numbers made another way.
MEASUREMENT_VERSION = 3  # 3: test and 5-shot accuracy in fp32
HASH_SCHEME = 2  # part of every configuration hash: changing it would train every run again
# Settings that change how a run is recorded or logged, not what it learns.
NOT_HASHED = {("run_dir",), ("log",), ("train", "plot"), ("train", "log_every"), ("train", "checkpoint_every"),
              ("train", "keep_checkpoints")}
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                   "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
MAX_EXTENSIONS = 4  # rounds of learning-rate sweep extension at most


class StudyError(VitlabError):
    """A run of the study failed; the message names it and where its log is."""


# ---- what a run is: its configuration's hash ---------------------------------------------------------------
def config_hash(run: Run) -> str:
    """A hash of what the run trains and measures: the validated config's settings that differ from the
    defaults (so a new setting with a default changes no hash), the kind of run and what is measured."""
    if run.kind == "train":
        from ..training.checks import validate
        from ..training.config import TrainConfig, from_dict

        resolved = dataclasses.asdict(validate(from_dict(run.config), check_paths=False))
        settings = _changed(resolved, dataclasses.asdict(TrainConfig()))
    else:
        settings = run.config
    text = json.dumps({"settings": settings, "kind": run.kind, "fewshot": run.fewshot, "test": run.test_split,
                       "measurement": HASH_SCHEME}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _changed(values: dict, defaults: dict, prefix: tuple = ()) -> dict:
    out = {}
    for key, value in values.items():
        path = prefix + (key,)
        if path in NOT_HASHED:
            continue
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and isinstance(default, dict) and value:
            inner = _changed(value, default, path)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


# ---- where results live ----------------------------------------------------------------------------------
def run_dir_of(out: Path, run: Run) -> Path:
    return out / "runs" / run.name


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # missing, or cut short: the run is not done


def read_result(out: Path, run: Run) -> dict | None:
    """The run's result if it finished with the configuration the grid gives it now."""
    result = _read_json(run_dir_of(out, run) / RESULT_FILE)
    if result is None or result.get("config_hash") != config_hash(run) or not measured_now(result):
        return None
    reused = result.get("reused_from")
    if reused and os.path.isabs(reused):  # written so by earlier versions: a row names no folder of this machine
        result["reused_from"] = os.path.relpath(reused, out)
    return result


def measured_now(result: dict) -> bool:
    """Whether a result was measured the way this version of vitlab measures."""
    return result.get("measurement", HASH_SCHEME) == MEASUREMENT_VERSION


def default_cache(out: Path) -> Path:
    return out.resolve().parent / "study-cache"


def from_cache(cache: Path | None, run: Run, out: Path) -> dict | None:
    """A result another study (or an earlier grid) recorded for the same configuration, if its run is still there."""
    if cache is None:
        return None
    cached = _read_json(cache / f"{config_hash(run)}.json")
    if cached is None or not Path(cached["run_dir"]).is_dir() or not measured_now(cached):
        return None
    where = os.path.relpath(cached["run_dir"], out)
    return {"run": run.name, **run.tags, **cached["metrics"], "run_dir": where, "config_hash": config_hash(run),
            "measurement": MEASUREMENT_VERSION, "reused_from": where}


def record(result: dict, out: Path, run: Run, cache: Path | None, metrics: dict) -> None:
    atomic_write_text(run_dir_of(out, run) / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        entry = {"run_dir": str(run_dir_of(out, run).resolve()), "metrics": metrics, "measurement": MEASUREMENT_VERSION}
        atomic_write_text(cache / f"{result['config_hash']}.json", json.dumps(entry, indent=2) + "\n")


def claim_run_dir(out: Path, run: Run, log=print) -> Path:
    """The run's directory, ready to train `run`: one left by another configuration is moved aside, not resumed."""
    run_dir = run_dir_of(out, run)
    wanted = config_hash(run)
    if run_dir.is_dir() and any(p.name != CHILD_LOG for p in run_dir.iterdir()):
        found = (_read_json(run_dir / HASH_FILE) or {}).get("config_hash")
        if found != wanted:
            aside = out / "runs" / ".replaced" / f"{run.name}-{found or 'unhashed'}-{time.strftime('%Y%m%d%H%M%S')}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            run_dir.rename(aside)
            log(f"{run.name}: its configuration changed ({found or 'no hash'} -> {wanted}); the old run is in {aside}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / HASH_FILE).is_file():
        atomic_write_text(run_dir / HASH_FILE, json.dumps({"config_hash": wanted, "run": run.name}) + "\n")
    return run_dir


def export_results(rows: list[dict], out: Path, dest: Path) -> int:
    """Copy the KEPT_FILES of each finished run in `rows` to DEST/NAME/; returns how many runs were copied.
    The result written is the row, this study's: a run reused from another study keeps its own name and tags."""
    for row in rows:
        source, target = out / row["run_dir"], dest / row["run"]
        target.mkdir(parents=True, exist_ok=True)
        for name in (n for n in KEPT_FILES if n != RESULT_FILE):  # paths inside relative to the study's folder
            if (source / name).is_file():
                text = (source / name).read_text().replace(str(source.resolve()), f"runs/{row['run']}")
                atomic_write_text(target / name, text)
        atomic_write_text(target / RESULT_FILE, json.dumps({**row, "run_dir": f"runs/{row['run']}"}, indent=2) + "\n")
    return len(rows)


def restore_known(known: Path | None, run: Run, out: Path) -> bool:
    """Take `run` from a folder of exported results when one there was trained with the same configuration."""
    if known is None:
        return False
    found = _read_json(known / run.name / RESULT_FILE)
    if found is None or found.get("config_hash") != config_hash(run) or not measured_now(found):
        return False
    run_dir = run_dir_of(out, run)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:  # the result last: its presence means "done"
        if (known / run.name / name).is_file():
            atomic_write_text(run_dir / name, (known / run.name / name).read_text())
    return True


# ---- running one run ----------------------------------------------------------------------------------------
def execute(run: Run, out: Path, *, cache: Path | None = None, log=print) -> dict:
    """Train (or resume) one run in this process, measure it, and record the result."""
    run_dir = claim_run_dir(out, run, log)
    start = time.perf_counter()
    if run.kind == "throughput":
        from ..bench import size_point

        metrics = size_point(**run.config)
        metrics["study_wall_s"] = time.perf_counter() - start
    else:
        metrics = train_and_measure(run, run_dir)
        # training over every session of the run (resumes included), plus this session's measuring
        metrics["study_wall_s"] = float(metrics.get("train_time_s") or 0.0) + metrics.pop("measure_s")
    result = {"run": run.name, **run.tags, **metrics, "run_dir": f"runs/{run.name}", "config_hash": config_hash(run),
              "measurement": MEASUREMENT_VERSION}
    record(result, out, run, cache, metrics)
    return result


def train_and_measure(run: Run, run_dir: Path) -> dict:
    from ..training import train
    from ..training.checks import validate
    from ..training.config import from_dict
    from .measure import run_metrics

    cfg = validate(from_dict({**run.config, "run_dir": str(run_dir)}))
    cfg.train.plot = False  # one figure per study, not one per run
    result = train(cfg)
    if result.interrupted_by is not None:
        raise KeyboardInterrupt(f"run {run.name} interrupted; run the study again to resume it")
    start = time.perf_counter()
    metrics = run_metrics(run_dir, run.config, fewshot=run.fewshot, test_split=run.test_split)
    return {**metrics, "measure_s": time.perf_counter() - start}


# ---- the grid ---------------------------------------------------------------------------------------------
def planned_runs(study: Study, size: str, out: Path, data: str | None = None) -> list[Run]:
    """The grid, plus the runs its sweeps have been extended by so far (from the results already there)."""
    runs = _with_data(study.runs(size), data)
    for _ in range(MAX_EXTENSIONS):
        done = [r for r in (read_result(out, run) for run in runs) if r is not None]
        if len(done) < len(runs):  # a sweep is judged once every run planned so far has finished
            break
        names = {r.name for r in runs}
        extra = [r for r in _with_data(study.extend(size, done), data) if r.name not in names]
        if not extra:
            break
        runs += extra
    return runs


def _with_data(runs: list[Run], data: str | None) -> list[Run]:
    if data:
        for r in runs:
            if r.kind == "train":
                r.config["data"]["dataset"] = data
    return runs


def run_study(study: Study, size: str, out: Path, *, jobs: int = 1, only: str | None = None, data: str | None = None,
              cache: Path | None = None, known: Path | None = None, trackers: list[str] = (),
              log=print) -> list[dict]:
    """Run whatever of the grid is not done yet (extending learning-rate sweeps whose best rate is at an edge);
    return every run's result row, in grid order.

    `data` replaces the data set of every training run (the paper size's placeholder, for instance); each
    training run also logs to `trackers` (studies/tracking.py); a run whose result `known` (a folder that
    `export_results` wrote) holds for its configuration is taken from there.
    """
    def grid() -> list[Run]:
        runs = with_tracking(planned_runs(study, size, out, data), study.name, size, out, list(trackers))
        if only is not None:
            runs = [r for r in runs if r.name == only]
            if not runs:
                raise StudyError(f"study {study.name} ({size}) has no run named {only!r}")
        return runs

    for _ in range(MAX_EXTENSIONS + 1):
        runs = grid()
        pending = pending_runs(runs, out, cache, log, known=known)
        while not pending and len(grown := grid()) > len(runs):  # taken results can extend a sweep further
            runs = grown
            pending = pending_runs(runs, out, cache, log, known=known)
        if not pending:
            break
        if len(pending) < len(runs) and only is None:
            log(f"{len(runs) - len(pending)} of {len(runs)} runs already finished in {out}; "
                f"running the other {len(pending)}")
        run_pending(pending, study, size, out, jobs=jobs, data=data, cache=cache, log=log)
        if only is not None:
            break
    missing = [r.name for r in runs if read_result(out, r) is None]
    if missing:
        raise StudyError(f"runs without a result: {', '.join(missing)} (see their study.log in {out / 'runs'})")
    return [read_result(out, r) for r in runs]


def pending_runs(runs: list[Run], out: Path, cache: Path | None, log=print, known: Path | None = None) -> list[Run]:
    """The runs without a result for their configuration; a result cached by another study, or exported to
    `known`, is copied in."""
    pending = []
    for run in runs:
        if read_result(out, run) is not None:
            continue
        if restore_known(known, run, out):
            log(f"{run.name}: finished before, with the same configuration; its result is taken from {known}")
            continue
        cached = from_cache(cache, run, out)
        if cached is not None and (out / cached["run_dir"]).resolve() != run_dir_of(out, run).resolve():
            run_dir_of(out, run).mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir_of(out, run) / RESULT_FILE, json.dumps(cached, indent=2) + "\n")
            log(f"{run.name}: the same configuration was trained in {cached['reused_from']}; its result is reused")
            continue
        pending.append(run)
    return pending


def run_pending(pending: list[Run], study: Study, size: str, out: Path, *, jobs: int, data: str | None,
                cache: Path | None, log=print) -> None:
    world, rank = launch_env().world_size, launch_env().rank
    if world > 1:
        run_share(pending[rank::world], study, size, out, rank=rank, world=world, data=data, cache=cache, log=log)
    elif jobs > 1 and len(pending) > 1:
        run_children(pending, study, size, out, jobs=jobs, data=data, cache=cache, log=log)
    else:
        for i, run in enumerate(pending, 1):
            log(f"[{i}/{len(pending)}] {run.name}")
            execute(run, out, cache=cache, log=log)


# ---- several runs at once ------------------------------------------------------------------------------------
def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container or `taskset` may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    cpus = cpus or usable_cpus()
    if jobs > cpus:
        warnings.warn(f"--jobs {jobs} is more than the {cpus} CPUs this process may use: the runs will share cores "
                      "and each will be slower (their results do not change)", stacklevel=2)
    return max(1, cpus // jobs)


def run_cost(run: Run) -> float:
    """Training FLOPs of a run (forward FLOPs x 3 x images), to start the longest runs first."""
    if run.kind != "train":
        return 0.0
    from ..models import count_flops
    from ..models.registry import model_config

    data = run.config["data"]
    arch = {"image_size": data["image_size"], "in_chans": data.get("in_chans", 3), **run.config["model"]["overrides"]}
    per_image = count_flops(model_config(run.config["model"]["name"], **arch), data["image_size"])
    return 3.0 * per_image * run.config["train"]["steps"] * data["batch_size"]


class GpuSlots:
    """The GPUs handed to child runs: each to one run at a time."""

    def __init__(self, count: int, first: int = 0):
        self.free = [(first + i) % count for i in range(count)] if count else []

    def take(self) -> int | None:
        return self.free.pop(0) if self.free else None

    def give_back(self, slot: int | None) -> None:
        if slot is not None:
            self.free.append(slot)


def _die_with_parent() -> None:
    """In a child: receive SIGTERM when the study process dies, even by kill -9 (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_children(runs: list[Run], study: Study, size: str, out: Path, *, jobs: int, rank: int = 0,
                 data: str | None = None, cache: Path | None = None, log=print):
    """Each run in a child `vitlab study ... --only RUN`, `jobs` at a time, longest first, CPU threads (or GPUs)
    shared out. SIGTERM or SIGINT to this process is passed on to the children, which save and stop."""
    import torch

    gpus = torch.cuda.device_count()
    slots = GpuSlots(gpus, first=launch_env().local_rank) if gpus else None
    jobs = min(jobs, gpus) if gpus and jobs > gpus else jobs
    threads = threads_per_job(jobs) if not gpus else 1
    queue = sorted(runs, key=run_cost, reverse=True)
    active, failed, stopping = [], [], []

    def stop(signum, frame):
        stopping.append(signum)
        for _, proc, _, _ in active:
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (queue and not stopping) or active:
            while queue and not stopping and len(active) < jobs:
                run = queue.pop(0)
                slot = slots.take() if slots else None
                active.append((run, *_start_child(run, study, size, out, threads, slot, data, cache), slot))
                log(f"started {run.name} ({threads} threads" + (f", GPU {slot})" if slot is not None else ")"))
            time.sleep(0.5)
            for item in list(active):
                run, proc, log_file, slot = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                log_file.close()
                if slots:
                    slots.give_back(slot)
                if proc.returncode != 0:
                    failed.append(run.name)
                log(f"{'finished' if proc.returncode == 0 else 'STOPPED' if stopping else 'FAILED'} {run.name}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping:
        raise KeyboardInterrupt("study stopped by a signal; run the same command again to resume it")
    if failed:
        raise StudyError(f"runs failed: {', '.join(failed)} (their output is in {out / 'runs'}/NAME/{CHILD_LOG})")


def _start_child(run: Run, study: Study, size: str, out: Path, threads: int, gpu: int | None, data: str | None,
                 cache: Path | None):
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(OMP_NUM_THREADS=str(threads), VITLAB_STUDY_THREADS=str(threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log_file = open(claim_run_dir(out, run) / CHILD_LOG, "a")
    cmd = [sys.executable, "-m", "vitlab", "study", study.name, "--size", size, "--out", str(out),
           "--only", run.name, "--no-report"] + (["--data", data] if data else []) + (
        ["--cache", str(cache)] if cache is not None else ["--no-cache"]) + [
        arg for tracker in run.config.get("log", {}).get("to", []) for arg in ("--log", tracker)]
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return proc, log_file


def run_share(runs: list[Run], study: Study, size: str, out: Path, *, rank: int, world: int,
              data: str | None = None, cache: Path | None = None, log=print, poll_s: float = 2.0) -> None:
    """Under torchrun: run this process's share of the runs (on its own device), then wait for the others'.

    Each process leaves a marker saying whether its share succeeded, so none waits for a failed one forever.
    """
    marker = out / f".rank-{rank}-of-{world}"
    for stale in out.glob(f".rank-{rank}-of-{world}.*"):
        stale.unlink()
    try:
        run_children(runs, study, size, out, jobs=1, rank=rank, data=data, cache=cache, log=log)
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


def finished_rows(study: Study, size: str, out: Path, data: str | None = None) -> tuple[list[dict], int]:
    """(the results of the runs finished so far, in grid order; how many runs are planned)."""
    runs = planned_runs(study, size, out, data)
    rows = [r for r in (read_result(out, run) for run in runs) if r is not None]
    return rows, len(runs)
