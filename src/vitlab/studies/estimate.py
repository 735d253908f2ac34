"""`vitlab study NAME --estimate`: how long the study's runs will take on this machine, before any trains.

One short probe per architecture (model, input size, batch): a few training steps on random images, timed after
a warm-up, with the threads a run will get. A run's estimate is its steps at the probe's speed plus its
measurements (held-out and test evaluation, 5-shot features) at the inference speed, which the probe puts at a
third of a training step per image. Throughput runs take their timing budget plus a fixed allowance.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch

from .core import Run

PROBE_WARMUP, PROBE_STEPS = 2, 4
MEASURED_IMAGES = {"val": 6_000, "test": 10_000}  # what a default-size run evaluates after training
FIXED_S = 5.0  # loading the data, building the model, saving the checkpoints: per run
THROUGHPUT_FIXED_S = 20.0  # warm-up and the memory probe's child process, per throughput point


@dataclass
class Estimate:
    run: str
    steps: int
    seconds_per_step: float
    seconds: float


def architecture_key(run: Run) -> str:
    c = run.config
    return json.dumps([c["model"]["name"], c["model"]["overrides"], c["data"]["image_size"],
                       c["data"].get("in_chans", 3), c["data"]["batch_size"], c["train"].get("precision", "fp32")],
                      sort_keys=True)


def probe_seconds_per_step(run: Run) -> float:
    """Median seconds of one training step of the run's model and batch, on random images."""
    from ..bench import random_batch, training_step
    from ..models import create_model
    from ..training.optim import make_adamw

    c = run.config
    size, chans, batch = c["data"]["image_size"], c["data"].get("in_chans", 3), c["data"]["batch_size"]
    model = create_model(c["model"]["name"], image_size=size, in_chans=chans, num_classes=10,
                         **c["model"]["overrides"]).train()
    x, y = random_batch(batch, size, 10, "cpu", in_chans=chans)
    step = training_step(model, make_adamw(model), x, y, c["train"].get("precision", "fp32"), clip_grad_norm=1.0)
    times = []
    for i in range(PROBE_WARMUP + PROBE_STEPS):
        start = time.perf_counter()
        step()
        if i >= PROBE_WARMUP:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def estimate_runs(runs: list[Run], progress=None) -> list[Estimate]:
    """An estimate for each run, probing each distinct architecture once."""
    speeds: dict[str, float] = {}
    out = []
    for run in runs:
        if run.kind != "train":
            seconds = float(run.config.get("seconds", 2.0)) + THROUGHPUT_FIXED_S
            out.append(Estimate(run.name, 0, 0.0, seconds))
            continue
        key = architecture_key(run)
        if key not in speeds:
            if progress:
                progress(f"probing {run.name}'s architecture")
            speeds[key] = probe_seconds_per_step(run)
        per_step = speeds[key]
        steps = int(run.config["train"]["steps"])
        per_image = per_step / run.config["data"]["batch_size"]
        measured = MEASURED_IMAGES["val"] + (MEASURED_IMAGES["test"] if run.test_split else 0)
        measured += MEASURED_IMAGES["test"] if run.fewshot else 0
        out.append(Estimate(run.name, steps, per_step, steps * per_step + measured * per_image / 3 + FIXED_S))
    return out


def format_estimates(estimates: list[Estimate], *, done: set[str], threads: int, jobs: int) -> str:
    rows = [f"{'run':<32} {'steps':>7} {'s/step':>8} {'minutes':>8}"]
    for e in estimates:
        state = "  (finished)" if e.run in done else ""
        rows.append(f"{e.run:<32} {e.steps:>7} {e.seconds_per_step:>8.3f} {e.seconds / 60:>8.1f}{state}")
    pending = [e.seconds for e in estimates if e.run not in done]
    total = sum(e.seconds for e in estimates)
    rows.append(f"in all: {total / 60:.1f} minutes for {len(estimates)} runs; still to run: "
                f"{sum(pending) / 60 / jobs:.1f} minutes for {len(pending)} runs "
                f"({jobs} at a time, {threads} torch threads each; probed on this machine as it is loaded now)")
    return "\n".join(rows)


def current_threads() -> int:
    return torch.get_num_threads()
