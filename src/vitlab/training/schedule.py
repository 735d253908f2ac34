"""Learning-rate schedule, in optimiser steps: linear warm-up to the peak, then cosine or linear decay."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, decay: str = "cosine",
              end_factor: float = 0.0, time_done: float = 0.0) -> float:
    """The multiplier of the peak learning rate for optimiser step `step` (0-based) of `total_steps`.

    Warm-up rises linearly from 1/warmup to 1 (so the first step already learns); decay then falls from 1
    at the end of warm-up to `end_factor` at the last step. `time_done`, the fraction of a time budget spent,
    moves the decay on when it is ahead of the steps: a machine too slow to train every step in its budget
    still decays fully by the budget's end (budgeted training, Li et al. 2020) instead of stopping mid-way.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min(max((step - warmup_steps) / decay_steps, time_done), 1.0)
    if decay == "constant":
        shape = 1.0
    elif decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown decay {decay!r}: cosine, linear or constant")
    return end_factor + (1.0 - end_factor) * shape


def set_learning_rate(optimizer, peak_lr: float, factor: float) -> float:
    """Set every parameter group's lr to peak x factor x the group's own scale (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = peak_lr * factor * group.get("lr_scale", 1.0)
    return peak_lr * factor
