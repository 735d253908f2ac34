"""One training step's pieces, shared by the Trainer and the throughput harness (vitlab.bench).

A step is: for each micro-batch, `forward_backward` (the objective's loss under the run's precision, then
backward); then `clip_gradients` (the global norm, measured and clipped); then the optimiser's step.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..runtime import autocast
from .objectives import loss_and_logs


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite and the config says to stop."""


def forward_backward(network: Callable, x: torch.Tensor, targets: torch.Tensor, precision: str = "fp32",
                     scale: int = 1) -> tuple[torch.Tensor, dict]:
    """network(x, targets), the loss (or (loss, logs)), under `precision`; loss / scale back-propagated.

    Returns the scaled loss (detached) and the logs. `scale` is the number of micro-batches a step
    accumulates, so that their gradients sum to the mean's.
    """
    with autocast(x.device, precision):
        loss, logs = loss_and_logs(network(x, targets))
    loss = loss / scale
    loss.backward()
    return loss.detach(), logs


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float | None = None) -> float:
    """Clip the global gradient norm to `max_norm` (None or 0: only measure it); returns the norm before."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm or float("inf"))  # inf: measure, change nothing
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
