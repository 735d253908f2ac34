"""What a study records of one trained run: accuracy, 5-shot linear accuracy, parameters and training compute.

Training compute is counted the way the paper's Figure 5 counts it, over the images actually seen: forward
FLOPs per image (models.complexity, multiply-adds x 2) x 3 (a backward pass costs about twice the forward)
x images seen (optimiser steps x global batch).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models import count_flops

FEWSHOT_SEEDS = (0, 1, 2)
MEASURE_PRECISION = "fp32"


def last_metric(summary: dict):
    """The run's last validation metric (summary.json written before it was named so: `last_accuracy`)."""
    return summary.get("last_metric", summary.get("last_accuracy"))


def run_metrics(run_dir: Path, config: dict, *, fewshot: bool = True, test_split: str | None = None) -> dict:
    """The numbers a study keeps of the finished training run in `run_dir`.

    `val_top1` is what the trainer measured on its evaluation split at the end (the held-out split at the
    default size); `test_top1` is measured here on `test_split` (None: the same as val_top1).
    """
    from ..checkpoints import load_pretrained

    summary = json.loads((run_dir / "summary.json").read_text())
    model = load_pretrained(run_dir)
    steps = int(summary["steps"])
    data = config["data"]
    batch = int(data["batch_size"])
    flops = count_flops(model.config, data["image_size"])
    test = test_split or data["eval_split"]
    row = {
        "val_top1": last_metric(summary),
        "test_top1": last_metric(summary) if test_split is None else
        test_accuracy(model, data["dataset"], test_split, image_size=data["image_size"]),
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": flops / 1e9,
        "steps": steps,
        "images_seen": steps * batch,
        "train_pflops": 3 * flops * steps * batch / 1e15,
        "train_time_s": summary.get("train_time_s", summary.get("wall_time_s")),  # all sessions of the run
        "images_per_s": summary.get("images_per_s"),
        "stopped_by_budget": bool(summary.get("out_of_time")),
    }
    if fewshot:  # 5 images per class from the split the model trained on, measured on the test split
        row["fewshot5"] = fewshot_accuracy(model, data["dataset"], data["train_split"], test,
                                           image_size=data["image_size"])
    return row


def test_accuracy(model, dataset: str, split: str, *, image_size: int) -> float:
    """Top-1 of `model` on a split, evaluated as `vitlab eval` does (the checkpoint's preprocessing), in fp32 as
    the studies train (bf16 is emulated, and slow, on CPUs without bf16 instructions)."""
    from ..data import build_dataset
    from ..data.preprocessing import of_model
    from ..evaluation import EvalBatches, evaluate

    data = build_dataset(dataset, split, in_chans=model.config.in_chans)
    batches = EvalBatches(data, image_size=image_size, batch_size=256, preprocessing=of_model(model))
    return evaluate(model, batches, precision=MEASURE_PRECISION, ks=(1,), progress=False)["top1"]


def fewshot_accuracy(model, dataset: str, train_split: str, test_split: str, *, image_size: int,
                     shots: int = 5, seeds=FEWSHOT_SEEDS) -> float:
    """Mean k-shot linear accuracy (the paper's closed-form ridge regression) of the frozen representation."""
    from ..data import build_dataset
    from ..evaluation.fewshot import fewshot_evaluation

    train = build_dataset(dataset, train_split, in_chans=model.config.in_chans)
    test = build_dataset(dataset, test_split, in_chans=model.config.in_chans)
    result = fewshot_evaluation(model, train, test, shots=(shots,), seeds=seeds, image_size=image_size,
                                precision=MEASURE_PRECISION, progress=False)
    return result["shots"][str(shots)]["mean"]


def loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean training loss) of a run's metrics.jsonl, for the studies that draw curves."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    points = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            points.append((int(record["step"]), float(record["loss"])))
    return points
