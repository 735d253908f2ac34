"""Training losses: softmax or sigmoid cross-entropy on class indices or soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
