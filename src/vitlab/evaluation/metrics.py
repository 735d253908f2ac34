"""Classification metrics streamed over any number of batches: top-k, per-class accuracy, confusion matrix.

Everything is kept as integer counts (a confusion matrix, top-k hit counts, ReaL hits), so results from several
torchrun processes are combined exactly by summing, and the order of samples never matters.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .real import real_hits
from ..data.errors import DataError
from ..runtime import all_reduce_sum, autocast, rank_and_world


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """For each k, how many rows have their label among the k largest logits (k clamped to the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit = top == labels[:, None]
    return torch.stack([hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


class ClassificationCounts:
    """Running counts for one evaluation; `update` per batch, `all_reduce` once, then `summary`."""

    def __init__(self, num_classes: int, ks: Sequence[int] = (1, 5), *, real_labels: list[list[int]] | None = None,
                 device="cpu"):
        # top-k is only reported for k below the class count (top-5 of 3 classes would always be 100%)
        self.ks = tuple(k for k in ks if k == 1 or k < num_classes)
        self.num_classes, self.real_labels = num_classes, real_labels
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)  # [true, predicted]
        self.topk_hits = torch.zeros(len(self.ks), dtype=torch.long, device=device)
        self.real = torch.zeros(2, dtype=torch.long)  # [correct, counted]

    def update(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} logits but {self.num_classes} classes were expected")
        labels = labels.to(logits.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
            raise DataError(f"label {bad} is outside the model's {self.num_classes} classes "
                             f"(0..{self.num_classes - 1}); evaluate with a checkpoint trained on this data set")
        predicted = logits.argmax(dim=1)
        flat = labels * self.num_classes + predicted
        self.confusion += torch.bincount(flat, minlength=self.num_classes ** 2).view(self.num_classes, -1)
        self.topk_hits += topk_correct(logits, labels, self.ks).to(self.topk_hits.device)
        if self.real_labels is not None:
            if indices is None:
                raise ValueError("ReaL accuracy needs each sample's data set index; the batches carry none")
            self.real += torch.tensor(real_hits(predicted.tolist(), indices.tolist(), self.real_labels))

    def all_reduce(self) -> None:
        """Sum the counts over torchrun processes (each sample was evaluated by exactly one of them)."""
        self.confusion = all_reduce_sum(self.confusion)
        self.topk_hits = all_reduce_sum(self.topk_hits)
        self.real = all_reduce_sum(self.real)

    def accuracy(self) -> float:
        """The share of samples whose argmax prediction is their label (0 when none was counted). Top-1 from
        `summary` counts a sample whose largest logit ties with others as topk orders them."""
        return int(self.confusion.trace()) / max(int(self.confusion.sum()), 1)

    def summary(self) -> dict:
        confusion = self.confusion.cpu()
        n = int(confusion.sum())
        per_class_total = confusion.sum(dim=1)
        per_class = [float(confusion[c, c] / t) if t else math.nan for c, t in enumerate(per_class_total.tolist())]
        result = {"num_samples": n}
        for k, hits in zip(self.ks, self.topk_hits.cpu().tolist()):
            result[f"top{k}"] = hits / n if n else math.nan
        result["per_class_accuracy"] = per_class
        result["per_class_count"] = per_class_total.tolist()
        result["confusion_matrix"] = confusion.tolist()
        if self.real_labels is not None:
            correct, counted = self.real.tolist()
            result["real_top1"] = correct / counted if counted else math.nan
            result["real_num_samples"] = counted
        return result


def unpack(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, labels) or (images, labels, indices)."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    images, labels = batch
    return images, labels, None


def logits_of(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a plain classifier predicts: its logits, under one name."""
    return {"": model(images)}


@torch.no_grad()
def count_predictions(model, batches: Iterable, counts: dict[str, ClassificationCounts], *, device,
                      precision: str = "fp32", predict: Callable = logits_of, progress: bool = False,
                      desc: str = "eval") -> dict[str, ClassificationCounts]:
    """The one evaluation loop: every batch through `model` (in eval mode meanwhile, under autocast for
    `precision`), each of `predict(model, images)`'s logits counted in `counts` under its name, the counts summed
    over torchrun ranks; returns `counts`. Batches are (images, labels[, indices]), labels as class
    indices or soft (per-class) targets, whose largest entry is the class."""
    was_training = getattr(model, "training", False)
    model.eval()
    rank, _ = rank_and_world()
    try:  # disable=None: tqdm draws only on a terminal, so logs get no carriage-return redraws
        for batch in tqdm(batches, desc=desc, unit="batch", disable=None if progress and rank == 0 else True):
            images, labels, indices = unpack(batch)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if labels.is_floating_point():
                labels = labels.argmax(-1)
            with autocast(device, precision):
                outputs = predict(model, images)
            for name, logits in outputs.items():
                counts[name].update(logits.float(), labels, indices)
    finally:
        model.train(was_training)
    for one in counts.values():
        one.all_reduce()
    return counts


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable, *, device="cpu", precision: str = "fp32",
             num_classes: int | None = None, ks: Sequence[int] = (1, 5), real_labels: list[list[int]] | None = None,
             progress: bool = True, desc: str = "eval") -> dict:
    """Top-k, per-class accuracy and confusion matrix of `model` over `batches` (this rank's share of them).

    Under torchrun every process calls this on its own shard; the counts are summed across processes, so each
    returns the result for the whole data set. Batches must not repeat samples across ranks (EvalBatches never
    does). `real_labels[i]` lists the valid labels of data set sample i (see real.py).
    """
    device = torch.device(device)
    model = model.to(device)
    counts = ClassificationCounts(num_classes or model.num_classes, ks, real_labels=real_labels, device=device)
    return count_predictions(model, batches, {"": counts}, device=device, precision=precision, progress=progress,
                             desc=desc)[""].summary()


def top1_accuracy(model, loader: Iterable, device: torch.device, precision: str = "fp32") -> float:
    """Accuracy of the argmax prediction over a training run's evaluation loader (every rank sees its shard; the
    counts are summed)."""
    counts = ClassificationCounts(model.num_classes, ks=(1,), device=device)
    return count_predictions(model, loader, {"": counts}, device=device, precision=precision)[""].accuracy()


def classification_summary(model, loader: Iterable, device: torch.device, num_classes: int,
                           precision: str = "fp32") -> dict:
    """What `evaluate` reports (top-k, per-class accuracy, confusion matrix) over a training run's evaluation
    loader, with the model left as it is (it may be sharded across ranks). Collective."""
    counts = ClassificationCounts(num_classes, device=device)
    return count_predictions(model, loader, {"": counts}, device=device, precision=precision)[""].summary()


def format_summary(result: dict, class_names: list[str] | None = None, max_classes: int = 20) -> str:
    """A short text report: accuracy lines, then the per-class accuracies (worst first past max_classes)."""
    lines = [f"samples: {result['num_samples']}"]
    for key in sorted(k for k in result if k.startswith("top")):
        lines.append(f"{key} accuracy: {100 * result[key]:.2f}%")
    if "real_top1" in result:
        lines.append(f"ReaL top1 accuracy: {100 * result['real_top1']:.2f}% "
                     f"({result['real_num_samples']} images with ReaL labels)")
    per_class = result["per_class_accuracy"]
    names = class_names or [str(c) for c in range(len(per_class))]
    order = list(range(len(per_class)))
    if len(order) > max_classes:
        order = sorted(order, key=lambda c: (math.isnan(per_class[c]), per_class[c]))[:max_classes]
        lines.append(f"per-class accuracy (the {max_classes} worst of {len(per_class)}):")
    else:
        lines.append("per-class accuracy:")
    for c in order:
        acc = "  n/a" if math.isnan(per_class[c]) else f"{100 * per_class[c]:5.1f}%"
        lines.append(f"  {acc}  {names[c]} ({result['per_class_count'][c]} samples)")
    return "\n".join(lines)


def save_confusion_png(confusion, path, class_names: list[str] | None = None, title: str = "confusion matrix") -> None:
    """Row-normalised confusion matrix (true class down, predicted across) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_write

    counts = torch.as_tensor(confusion, dtype=torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    k = counts.shape[0]
    side = min(4 + 0.35 * k, 20)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 40:
        names = class_names or [str(c) for c in range(k)]
        ax.set_xticks(range(k), names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
