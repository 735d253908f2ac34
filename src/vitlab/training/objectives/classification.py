"""Supervised classification: the model's logits against the labels (the paper's pre-training and fine-tuning)."""

from __future__ import annotations

from ...evaluation.metrics import top1_accuracy
from ..losses import classification_loss
from .base import Objective


class Classification(Objective):
    name = "classification"
    metric = "eval_accuracy"

    def __init__(self, kind: str = "softmax", label_smoothing: float = 0.0):
        super().__init__()
        self.kind, self.label_smoothing = kind, label_smoothing

    def forward(self, model, images, targets):
        return classification_loss(model(images), targets, self.kind, self.label_smoothing)

    def evaluate(self, model, loader, d, *, precision="fp32"):
        return {"eval_accuracy": top1_accuracy(model, loader, d.device, precision)}
