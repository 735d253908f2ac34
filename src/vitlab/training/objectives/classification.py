"""Supervised classification: the model's logits against the labels (the paper's pre-training and fine-tuning)."""

from __future__ import annotations

from ..loop import classification_loss, evaluate_top1
from .base import Objective


class Classification(Objective):
    name = "classification"
    metric = "eval_accuracy"

    def __init__(self, kind: str = "softmax", label_smoothing: float = 0.0):
        super().__init__()
        self.kind, self.label_smoothing = kind, label_smoothing

    def forward(self, model, images, targets):
        return classification_loss(model(images), targets, self.kind, self.label_smoothing)

    def evaluate(self, model, loader, d, *, bf16=False):
        return {"eval_accuracy": evaluate_top1(model, loader, d, bf16=bf16)}
