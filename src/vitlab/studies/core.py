"""What a study is: a declared grid of runs, at three sizes, and how to summarise and draw them.

A run is an ordinary `vitlab train` config (a plain dict, the same tables as a TOML recipe) plus the tags
that place it on the study's axes ("family": "ViT", "subset": 3000, ...). A study declares its runs for each
size; the runner trains them (each in its own run directory, resumable), measures what the study plots, and
writes results.csv, the figure and REPORT.md.

Sizes: "quick" (a couple of minutes on 2 CPU cores; the tests run it), "default" (at most ~75 minutes on an
idle 2-core CPU, Fashion-MNIST trained for several epochs; the results committed in docs/studies/) and "paper"
(the paper's own grid, for users with the data and accelerators; `--dry-run` prints it).

At the default size every run trains on 54,000 of Fashion-MNIST's 60,000 training images and is evaluated at
its end on the other 6,000 (the held-out split that picks a learning rate); the test set is measured once, by
the study, and never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

SIZES = ("quick", "default", "paper")


@dataclass
class Run:
    name: str  # unique in the study; also its run directory's name
    config: dict  # a training config as tables ({"model": {...}, "data": {...}, ...}); empty for measurements
    tags: dict  # the run's place on the study's axes, copied into results.csv
    kind: str = "train"  # "train": train then evaluate; "throughput": measure only
    fewshot: bool = True  # also measure 5-shot linear accuracy of the trained encoder
    test_split: str | None = None  # measured after training (None: the held-out split the trainer evaluated)


@dataclass
class Finding:
    """One finding of the paper, our numbers for it and the verdict (see verdict())."""
    claim: str
    ours: str
    verdict: str


@dataclass
class Study:
    name: str
    title: str
    paper: str  # where in the paper: "Figure 9 (Appendix D.3)"
    question: str  # what the study asks, one or two sentences
    grid: Callable[[str], list[Run]]  # size -> runs
    draw: Callable[[list[dict], "object"], None]  # (results rows, matplotlib figure path) -> writes the figure
    summarise: Callable[[list[dict]], str]  # results rows -> the markdown table(s) of REPORT.md
    paper_numbers: str  # markdown: what the paper reports, to put beside ours
    budget: dict = field(default_factory=dict)  # size -> a sentence stating the training budget per run
    # results rows -> the paper's findings with our numbers and a verdict each
    findings: Callable[[list[dict]], list[Finding]] = lambda rows: []
    # (size, results rows so far) -> runs to add: a learning-rate sweep whose best rate is at its edge grows
    extend: Callable[[str, list[dict]], list[Run]] = lambda size, rows: []

    def runs(self, size: str) -> list[Run]:
        if size not in SIZES:
            raise ValueError(f"unknown study size {size!r}: use one of {', '.join(SIZES)}")
        runs = self.grid(size)
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"study {self.name}: run names repeat: {names}")
        return runs


# ---- the Fashion-MNIST base recipe every small study starts from --------------------------------------------
# The main job's architecture (patch 4 on 28 x 28 = 49 tokens, width 128, depth 6) and the recipe its two stages
# share (the recipe base/fashion-mnist.toml: AdamW with betas (0.9, 0.99), weight decay 0.05, cosine, clipping at
# 1, no augmentation); studies change one thing at a time from here.
MAIN_VIT = dict(patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4, classifier="gap")
# The base of most default-size studies: a quarter of the main job's compute per image, so that each run can
# train for several epochs.
SMALL_VIT = dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)
# The quick size: a few seconds per run on 2 cores.
TINY_VIT = dict(patch_size=7, width=32, depth=2, mlp_dim=64, num_heads=2, classifier="gap")
# fp32 rather than the recipe's bf16: the same numbers on every CPU, and fast on all of them (bf16 autocast is
# faster only where the CPU has bf16 instructions, and ~10x slower where it must emulate them, as on AVX2-only CPUs).
STUDY_PRECISION = "fp32"
TRAIN_IMAGES = 54_000  # Fashion-MNIST's training images a default-size run trains on; the other 6,000 are held out


@dataclass(frozen=True)
class Scale:
    """Batch size and splits of the runs of one study size."""
    batch_size: int
    train_split: str
    eval_split: str  # evaluated at the end of training: the held-out split that picks a learning rate
    test_split: str  # measured once after training


def scale_of(size: str) -> Scale:
    if size == "quick":
        return Scale(64, "train", "test[:500]", "test[:500]")
    return Scale(128, f"train[:{TRAIN_IMAGES}]", f"train[{TRAIN_IMAGES}:]", "test")


# A finding that may hinge on training length is judged again with its two arms trained this many times longer
# (one seed): a difference that lasts is the arms', one that closes was a head start.
LONGER = 3


def split_longer(rows: list[dict], epochs: float) -> tuple[list[dict], list[dict]]:
    """(the rows of runs trained for the grid's `epochs`, the rows of runs trained longer: tagged other "epochs")."""
    longer = [r for r in rows if r.get("epochs", epochs) != epochs]
    return [r for r in rows if r not in longer], longer


def epochs_to_steps(epochs: float, batch_size: int, images: int = TRAIN_IMAGES) -> int:
    """Optimiser steps for `epochs` passes over `images` training images."""
    return steps_for(round(epochs * images), batch_size)


def fashion_mnist_run(*, model: str = "ViT-Ti/16", overrides: dict | None = None, steps: int = 500,
                      scale: Scale | None = None, lr: float = 1e-3, train_split: str | None = None,
                      image_size: int = 28, warmup: int | None = None, dataset: str = "fashion_mnist",
                      seed: int = 0, **splits) -> dict:
    """A training config (tables) for one study run on Fashion-MNIST (or another source of 1-channel images):
    the main job's base recipe with the study's model, data, length, learning rate and precision.

    `scale` gives the batch size and splits (default: the default size's); `train_split`, `eval_split` and
    `batch_size` given by name replace its values.
    """
    from ..recipes import FOLDER
    from ..training.config import deep_merge, read_file

    scale = scale or scale_of("default")
    study = {
        "seed": seed,
        "model": {"name": model, "overrides": dict(overrides or {})},
        "data": {"dataset": dataset, "train_split": train_split or scale.train_split,
                 "eval_split": splits.get("eval_split", scale.eval_split), "image_size": image_size,
                 "batch_size": splits.get("batch_size", scale.batch_size)},
        "optim": {"lr": lr},
        "schedule": {"warmup_steps": max(1, steps // 20) if warmup is None else warmup},
        "train": {"steps": steps, "precision": STUDY_PRECISION, "log_every": max(1, steps // 40),
                  "checkpoint_every": max(50, steps // 4), "keep_checkpoints": 1},
    }
    return deep_merge(read_file(FOLDER / "base" / "fashion-mnist.toml"), study)


def steps_for(images: int, batch_size: int) -> int:
    """Optimiser steps that show the model `images` images (at least one step)."""
    return max(1, -(-images // batch_size))


# ---- the paper's own scale (for users with the data and accelerators; `--dry-run` prints the grid) ----------
# Upstream pre-training as Section 4.1 / Appendix B.1 states it: Adam (0.9, 0.999), batch 4096, weight decay 0.1,
# 10k warm-up steps then linear decay, clipping at 1, 224 px. The data set is a placeholder the user points at
# their copy with `vitlab study NAME --size paper --data SPEC`.
PAPER_DATA = "shards:/data/jft300m/train-{000000..009999}.tar"


def paper_run(model: str, *, steps: int, lr: float = 8e-4, overrides: dict | None = None, batch_size: int = 4096,
              weight_decay: float = 0.1, train_split: str = "train", eval_split: str = "validation",
              image_size: int = 224, dataset: str = PAPER_DATA, seed: int = 0) -> dict:
    return {
        "seed": seed,
        "model": {"name": model, "overrides": dict(overrides or {})},
        "data": {"dataset": dataset, "train_split": train_split, "eval_split": eval_split,
                 "image_size": image_size, "in_chans": 3, "batch_size": batch_size},
        "optim": {"name": "adam", "lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999]},
        "schedule": {"warmup_steps": min(10_000, steps // 10), "decay": "linear"},
        "train": {"steps": steps, "precision": "bf16", "clip_grad_norm": 1.0, "log_every": 100,
                  "eval_every": 5000, "checkpoint_every": 2000},
    }


# ---- learning-rate sweeps that bracket their optimum ----------------------------------------------------------
def best_rates(rows: list[dict], arm: str, metric: str = "val_top1") -> dict:
    """{arm value: (best learning rate, sorted rates tried)} by the mean over seeds of `metric`."""
    from statistics import mean

    by_arm: dict = {}
    for r in rows:
        if r.get(metric) is not None:
            by_arm.setdefault(r[arm], {}).setdefault(float(r["lr"]), []).append(float(r[metric]))
    return {a: (max(rates, key=lambda lr: mean(rates[lr])), sorted(rates)) for a, rates in by_arm.items()}


def rates_beyond_edges(rows: list[dict], arm: str, metric: str = "val_top1") -> dict:
    """{arm value: the next learning rate} for each arm whose best rate is the lowest or highest tried: one more
    step of the sweep's own ratio beyond that edge, so the optimum ends up bracketed."""
    out = {}
    for value, (best, rates) in best_rates(rows, arm, metric).items():
        if len(rates) < 2:
            continue
        if best == rates[0]:
            out[value] = _round_rate(rates[0] ** 2 / rates[1])
        elif best == rates[-1]:
            out[value] = _round_rate(rates[-1] ** 2 / rates[-2])
    return out


def _round_rate(lr: float) -> float:
    return float(f"{lr:.2g}")
