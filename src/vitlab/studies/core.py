"""What a study is: a declared grid of runs, at three sizes, and how to summarise and draw them.

A run is an ordinary `vitlab train` config (a plain dict, the same tables as a TOML recipe) plus the tags
that place it on the study's axes ("family": "ViT", "subset": 3000, ...). A study declares its runs for each
size; the runner trains them (each in its own run directory, resumable), measures what the study plots, and
writes results.csv, the figure and REPORT.md.

Sizes: "quick" (a couple of minutes on 2 CPU cores; the tests run it), "default" (at most ~30 minutes on
2 CPU cores, Fashion-MNIST; the results committed in docs/studies/) and "paper" (the paper's own grid, for
users with the data and accelerators; `--dry-run` prints it).
"""

from __future__ import annotations

import copy
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

    def runs(self, size: str) -> list[Run]:
        if size not in SIZES:
            raise ValueError(f"unknown study size {size!r}: use one of {', '.join(SIZES)}")
        runs = self.grid(size)
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"study {self.name}: run names repeat: {names}")
        return runs


# ---- the Fashion-MNIST base recipe every small study starts from --------------------------------------------
# The main job's architecture (patch 4 on 28 x 28 = 49 tokens, width 128, depth 6) trained on every token in
# bf16 with AdamW; studies change one thing at a time from here.
MAIN_VIT = dict(patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4, classifier="gap")
# The quick size: a few seconds per run on 2 cores.
TINY_VIT = dict(patch_size=7, width=32, depth=2, mlp_dim=64, num_heads=2, classifier="gap")


def fashion_mnist_run(*, model: str = "ViT-Ti/16", overrides: dict | None = None, steps: int = 500,
                      batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adamw", train_split: str = "train",
                      eval_split: str = "test", image_size: int = 28, warmup: int | None = None,
                      max_minutes: float | None = None, dataset: str = "fashion_mnist", seed: int = 0,
                      extra: dict | None = None) -> dict:
    """A training config (tables) for one study run on Fashion-MNIST (or another source of 1-channel images)."""
    config = {
        "seed": seed,
        "model": {"name": model, "overrides": dict(overrides or {})},
        "data": {"dataset": dataset, "train_split": train_split, "eval_split": eval_split,
                 "image_size": image_size, "in_chans": 1, "batch_size": batch_size,
                 "inception_crop": False, "flip": False},
        "optim": {"name": optimizer, "lr": lr, "weight_decay": 0.05 if optimizer == "adamw" else 0.0},
        "schedule": {"warmup_steps": max(1, steps // 20) if warmup is None else warmup, "decay": "cosine"},
        "train": {"steps": steps, "precision": "bf16", "clip_grad_norm": 1.0, "log_every": max(1, steps // 20),
                  "eval_every": 0, "checkpoint_every": max(50, steps // 4), "keep_checkpoints": 1},
    }
    if max_minutes is not None:
        config["train"]["max_minutes"] = max_minutes
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return config


def scale_of(size: str) -> tuple[int, str]:
    """(batch size, evaluation split) of a study run at the quick or default size."""
    return (64, "test[:500]") if size == "quick" else (128, "test")


def with_changes(config: dict, **sections) -> dict:
    """A copy of `config` with some keys of some tables replaced: with_changes(c, optim={"lr": 3e-4})."""
    out = copy.deepcopy(config)
    for section, values in sections.items():
        target = out.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = value
    return out


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
