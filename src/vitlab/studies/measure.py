"""What a study records of one trained run: accuracy, 5-shot linear accuracy, parameters and training compute.

Training compute is counted the way the paper's Figure 5 counts it, over the images actually seen: forward
FLOPs per image (models.complexity, multiply-adds x 2) x 3 (a backward pass costs about twice the forward)
x images seen (optimiser steps x global batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..models import count_flops

FEWSHOT_SHOTS = (5,)
FEWSHOT_SEEDS = (0, 1, 2)


def run_metrics(run_dir: Path, config: dict, *, fewshot: bool = True, fewshot_test_split: str | None = None) -> dict:
    """The numbers a study keeps of the finished training run in `run_dir`."""
    from ..checkpoints import load_pretrained

    summary = json.loads((run_dir / "summary.json").read_text())
    model = load_pretrained(run_dir)
    steps = int(summary["steps"])
    batch = int(config["data"]["batch_size"])
    flops = count_flops(model.config, config["data"]["image_size"])
    row = {
        "test_top1": summary.get("last_accuracy"),
        "params": sum(p.numel() for p in model.parameters()),
        "gflops_per_image": flops / 1e9,
        "steps": steps,
        "images_seen": steps * batch,
        "train_pflops": 3 * flops * steps * batch / 1e15,
        "train_time_s": summary.get("wall_time_s"),
        "images_per_s": summary.get("images_per_s"),
        "stopped_by_budget": bool(summary.get("out_of_time")),
    }
    if fewshot:
        data = config["data"]
        row["fewshot5"] = fewshot_accuracy(model, data["dataset"], "train",
                                           fewshot_test_split or data["eval_split"], image_size=data["image_size"])
    return row


def fewshot_accuracy(model, dataset: str, train_split: str, test_split: str, *, image_size: int,
                     shots: int = 5, seeds=FEWSHOT_SEEDS) -> float:
    """Mean k-shot linear accuracy (the paper's closed-form ridge regression) of the frozen representation."""
    from ..data import build_dataset
    from ..evaluation import EvalBatches, extract_features, fewshot_results
    from ..evaluation.fewshot import shots_needed
    from ..evaluation.batches import model_preprocessing

    in_chans = model.config.in_chans
    train = build_dataset(dataset, train_split, in_chans=in_chans)
    test = build_dataset(dataset, test_split, in_chans=in_chans)
    labels = np.asarray(train.labels if hasattr(train, "labels") else [train[i][1] for i in range(len(train))])
    picked = shots_needed(labels, train.num_classes, (shots,), seeds)

    def features(ds, indices):
        batches = EvalBatches(ds, image_size=image_size, batch_size=256, preprocessing=model_preprocessing(model),
                              indices=indices)
        return extract_features(model, batches, precision="bf16", progress=False)

    train_x, _, train_idx = features(train, picked)
    test_x, test_y, _ = features(test, None)
    result = fewshot_results(labels, train_x, test_x, test_y, train.num_classes, train_indices=train_idx.numpy(),
                             shots=(shots,), seeds=list(seeds))
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
