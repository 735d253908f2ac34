"""The VTAB-1k transfer protocol (Zhai et al. 2019) as the ViT paper runs it.

For each task: 1000 training images (a seeded random choice from the task's training split), of which 800
train and 200 validate; fine-tune the whole model for 2,500 steps at learning rate 0.01 with the paper's
fine-tuning recipe (SGD, momentum 0.9, no weight decay, linear warm-up then cosine decay, gradient clipping at
global norm 1, batch 512), then report validation and test accuracy. The results table gives the mean of each
group (Natural, Specialized, Structured) and the mean over all tasks, which is what "VTAB (19 tasks)" reports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..checkpoints.adapt import adapt_model, replace_head
from .batches import EvalBatches, normalise
from .metrics import evaluate
from .runtime import autocast, model_preprocessing

GROUPS = ("natural", "specialized", "structured")

# The 19 VTAB-1k tasks and their groups, in the order the VTAB paper lists them.
VTAB_TASKS = {
    "caltech101": "natural", "cifar100": "natural", "dtd": "natural", "flowers102": "natural", "pets": "natural",
    "sun397": "natural", "svhn": "natural",
    "camelyon": "specialized", "eurosat": "specialized", "resisc45": "specialized", "retinopathy": "specialized",
    "clevr_count": "structured", "clevr_distance": "structured", "dmlab": "structured",
    "kitti_distance": "structured", "dsprites_location": "structured", "dsprites_orientation": "structured",
    "smallnorb_azimuth": "structured", "smallnorb_elevation": "structured",
}


@dataclass
class VTABSettings:
    train_images: int = 800
    val_images: int = 200
    steps: int = 2500
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 512
    micro_batch_size: int | None = None  # accumulate gradients over micro-batches of this size
    warmup_steps: int = 200
    grad_clip: float = 1.0
    image_size: int | None = None  # None: the checkpoint's
    flip: bool = False  # random horizontal flips (harmful for orientation tasks, so off by default)
    seed: int = 0


def task_group(name: str) -> str:
    try:
        return VTAB_TASKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown VTAB task {name!r}; the tasks are: {', '.join(VTAB_TASKS)}") from None


def split_1k(num_train: int, train_images: int = 800, val_images: int = 200, seed: int = 0):
    """(train indices, validation indices): a seeded choice of train_images + val_images from the split."""
    need = train_images + val_images
    if num_train < need:
        raise ValueError(f"the task's training split has {num_train} images; VTAB-1k needs {need}")
    chosen = np.random.default_rng(seed).permutation(num_train)[:need]
    return np.sort(chosen[:train_images]), np.sort(chosen[train_images:])


def load_uint8(dataset, indices, image_size) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen images, resized, held in memory as uint8 (N, C, H, W), with their labels."""
    images, labels = [], []
    for x, y, _ in EvalBatches(dataset, image_size=image_size, batch_size=100, indices=indices, raw=True):
        images.append(x.round().clamp(0, 255).to(torch.uint8))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """The paper's fine-tuning head: a zero-initialised linear layer for the task's classes, always fresh."""
    if model.num_classes != num_classes:
        adapt_model(model, num_classes=num_classes)  # also drops the pre-training pre-logits layer
    else:
        replace_head(model, num_classes)
    return model


def lr_at(step: int, settings: VTABSettings) -> float:
    """Linear warm-up to settings.lr, then cosine decay to zero at the last step."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def finetune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: VTABSettings, *,
             preprocessing: dict, device="cpu", amp_dtype=None, progress: bool = True) -> list[float]:
    """Fine-tune on in-memory uint8 images with the paper's recipe; returns the loss of every step."""
    device = torch.device(device)
    model.train().to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    micro = settings.micro_batch_size or settings.batch_size
    images, labels = images.to(device), labels.to(device)
    losses = []
    for step in tqdm(range(settings.steps), desc="fine-tune", unit="step", disable=None if progress else True):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, settings)
        batch = torch.randint(len(images), (settings.batch_size,), generator=generator)  # with replacement
        optimiser.zero_grad(set_to_none=True)
        total = 0.0
        for part in batch.split(micro):
            x = normalise(images[part].float(), preprocessing)
            if settings.flip:
                flip = (torch.rand(len(part), generator=generator) < 0.5).to(device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with autocast(device, amp_dtype):
                loss = F.cross_entropy(model(x).float(), labels[part])
            (loss * len(part) / len(batch)).backward()
            total += loss.item() * len(part) / len(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimiser.step()
        losses.append(total)
    return losses


def run_task(model: nn.Module, train_dataset, test_dataset, settings: VTABSettings, *, device="cpu",
             amp_dtype=None, eval_batch_size: int = 256, progress: bool = True) -> dict:
    """Fine-tune `model` (already given a head for the task's classes) on the 800 and report val/test accuracy."""
    size = settings.image_size or model.config.image_size
    preprocessing = model_preprocessing(model)
    train_idx, val_idx = split_1k(len(train_dataset), settings.train_images, settings.val_images, settings.seed)
    images, labels = load_uint8(train_dataset, train_idx, size)
    losses = finetune(model, images, labels, settings, preprocessing=preprocessing, device=device,
                      amp_dtype=amp_dtype, progress=progress)

    def accuracy(dataset, indices, desc):
        batches = EvalBatches(dataset, image_size=size, batch_size=eval_batch_size, preprocessing=preprocessing,
                              indices=indices)
        return evaluate(model, batches, device=device, amp_dtype=amp_dtype, ks=(1,), progress=progress,
                        desc=desc)

    val = accuracy(train_dataset, val_idx, "val")
    test = accuracy(test_dataset, None, "test")
    return {"val_accuracy": val["top1"], "test_accuracy": test["top1"], "num_train": len(train_idx),
            "num_val": val["num_samples"], "num_test": test["num_samples"], "final_loss": losses[-1],
            "first_loss": losses[0], "settings": asdict(settings)}


def group_means(accuracies: dict[str, float]) -> dict:
    """Mean accuracy of each group over the tasks present, and the mean over all tasks present."""
    means = {}
    for group in GROUPS:
        values = [a for t, a in accuracies.items() if task_group(t) == group]
        means[group] = {"mean": float(np.mean(values)) if values else math.nan, "tasks": len(values),
                        "of": sum(g == group for g in VTAB_TASKS.values())}
    values = list(accuracies.values())
    means["overall"] = {"mean": float(np.mean(values)) if values else math.nan, "tasks": len(values),
                        "of": len(VTAB_TASKS)}
    return means


def format_table(results: dict[str, dict], key: str = "test_accuracy") -> str:
    """Per-task accuracies in VTAB order, then the group and overall means."""
    accuracies = {t: r[key] for t, r in results.items()}
    width = max(len(t) for t in VTAB_TASKS) + 2
    lines = [f"{'task':<{width}}{'group':<13}{'val':>8}{'test':>8}"]
    for task in sorted(results, key=list(VTAB_TASKS).index):
        r = results[task]
        lines.append(f"{task:<{width}}{task_group(task):<13}{100 * r['val_accuracy']:7.2f}%"
                     f"{100 * r['test_accuracy']:7.2f}%")
    lines.append("-" * (width + 29))
    for name, m in group_means(accuracies).items():
        mean = "    n/a" if math.isnan(m["mean"]) else f"{100 * m['mean']:6.2f}%"
        partial = "" if m["tasks"] == m["of"] else f"  ({m['tasks']} of {m['of']} tasks)"
        lines.append(f"{name.capitalize() + ' mean':<{width + 13}}{'':>8}{mean:>8}{partial}")
    return "\n".join(lines)
