"""The pieces of one training step: the loss, bad-loss detection, and a plain top-1 evaluation."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Dist, all_reduce_sum


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite and the config says to stop."""


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "softmax",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy, or sigmoid cross-entropy summed over classes (multi-label pre-training).

    `targets` are class indices (int) or per-class probabilities (float, e.g. from mixup/cutmix).
    """
    logits = logits.float()
    num_classes = logits.shape[-1]
    if not targets.is_floating_point():
        if kind == "softmax":
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        targets = F.one_hot(targets, num_classes).float()
        if label_smoothing:
            targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    if targets.shape != logits.shape:
        raise ValueError(f"soft targets of shape {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    if kind == "softmax":
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate_top1(model: nn.Module, loader, d: Dist, *, bf16: bool = False) -> float:
    """Top-1 accuracy over the evaluation loader (every rank sees its shard; the counts are summed)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, targets in loader:
        images, targets = images.to(d.device, non_blocking=True), targets.to(d.device, non_blocking=True)
        with autocast(d.device, bf16):
            logits = model(images)
        if targets.is_floating_point():
            targets = targets.argmax(-1)
        correct += (logits.argmax(-1) == targets).sum().item()
        total += targets.numel()
    model.train(was_training)
    correct, total = all_reduce_sum([correct, total], d)
    return correct / max(total, 1)
