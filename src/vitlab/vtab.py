"""The VTAB-1k transfer protocol (Zhai et al. 2019) as the ViT paper runs it: fine-tuning through the Trainer,
then evaluation, so it sits above both.

For each task: 1000 training images (a seeded random choice from the task's training split), of which 800
train and 200 validate; fine-tune the whole model for 2,500 steps at learning rate 0.01 with the paper's
fine-tuning recipe (SGD, momentum 0.9, no weight decay, linear warm-up then cosine decay, gradient clipping at
global norm 1, batch 512) through the same Trainer as `vitlab train`, then report validation and test accuracy. The results table gives the mean of each
group (Natural, Specialized, Structured) and the mean over all tasks, which is what "VTAB (19 tasks)" reports.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DataConfig
from .data.errors import DataError
from .data.preprocessing import Preprocessing, of_model
from .errors import UsageError
from .evaluation import EvalBatches, evaluate
from .training.config import DistributedConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainSettings
from .training.trainer import TrainResult, train

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

    def __post_init__(self):
        if self.batch_size % (self.micro_batch_size or self.batch_size):
            raise UsageError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                             f"({self.micro_batch_size})")


def task_group(name: str) -> str:
    try:
        return VTAB_TASKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown VTAB task {name!r}; the tasks are: {', '.join(VTAB_TASKS)}") from None


def split_1k(num_train: int, train_images: int = 800, val_images: int = 200, seed: int = 0):
    """(train indices, validation indices): a seeded choice of train_images + val_images from the split."""
    need = train_images + val_images
    if num_train < need:
        raise DataError(f"the task's training split has {num_train} images; VTAB-1k needs {need}")
    chosen = np.random.default_rng(seed).permutation(num_train)[:need]
    return np.sort(chosen[:train_images]), np.sort(chosen[train_images:])


def load_uint8(dataset, indices, record: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen images, cropped and resized as `record` says, held in memory as uint8 (N, C, H, W), with their
    labels."""
    images, labels = [], []
    for x, y, _ in EvalBatches(dataset, preprocessing=record, batch_size=100, indices=indices, raw=True):
        images.append(x.round().clamp(0, 255).to(torch.uint8))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


class MemoryBatches:
    """In-memory uint8 images as a Trainer's loader: normalised float batches on the device.

    train=True: endless seeded micro-batches drawn with replacement (optionally flipped), the protocol's
    sampler; its position is the generator's state, saved with a checkpoint. train=False: each image once.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int, *,
                 preprocessing: Preprocessing, device, train: bool, flip: bool = False, seed: int = 0):
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.num_classes, self.batch_size, self.preprocessing = num_classes, batch_size, preprocessing
        self.train, self.flip = train, flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        if not self.train:
            for start in range(0, len(self.images), self.batch_size):
                part = slice(start, start + self.batch_size)
                yield self.preprocessing.normalise(self.images[part]), self.labels[part]
            return
        while True:
            part = torch.randint(len(self.images), (self.batch_size,), generator=self.generator).to(self.device)
            x = self.preprocessing.normalise(self.images[part])
            if self.flip:
                flip = (torch.rand(len(part), generator=self.generator) < 0.5).to(self.device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield x, self.labels[part]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def finetune_config(settings: VTABSettings, run_dir, *, device="cpu", precision: str = "fp32") -> TrainConfig:
    """The paper's fine-tuning recipe as a training config: SGD with momentum, no weight decay, linear
    warm-up then cosine decay to zero, the global gradient norm clipped, micro-batches accumulated."""
    micro = settings.micro_batch_size or settings.batch_size
    return TrainConfig(
        run_dir=str(run_dir), seed=settings.seed,
        data=DataConfig(batch_size=settings.batch_size),
        optim=OptimConfig(name="sgd", lr=settings.lr, momentum=settings.momentum, weight_decay=0.0),
        schedule=ScheduleConfig(warmup_steps=min(settings.warmup_steps, settings.steps), decay="cosine"),
        train=TrainSettings(steps=settings.steps, accumulation_steps=settings.batch_size // micro,
                            clip_grad_norm=settings.grad_clip, precision=precision, log_every=max(1, settings.steps // 10),
                            checkpoint_every=settings.steps, keep_checkpoints=1, plot=False),
        distributed=DistributedConfig(device=str(device)))


def finetune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
             val_labels: torch.Tensor, settings: VTABSettings, *, preprocessing: Preprocessing, device="cpu",
             precision: str = "fp32", work_dir=None) -> TrainResult:
    """Fine-tune on in-memory uint8 images with the paper's recipe, through the Trainer (in a temporary run
    directory under `work_dir`); the result's last_metric is the validation accuracy."""
    micro = settings.micro_batch_size or settings.batch_size
    memory = functools.partial(MemoryBatches, num_classes=model.num_classes, preprocessing=preprocessing,
                               device=device)
    loaders = (memory(images, labels, batch_size=micro, train=True, flip=settings.flip, seed=settings.seed),
               memory(val_images, val_labels, batch_size=micro, train=False))
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vtab-run-", dir=work_dir) as run_dir:
        cfg = finetune_config(settings, run_dir, device=device, precision=precision)
        result = train(cfg, loaders=loaders, model=model)
    if result.interrupted_by is not None:
        raise KeyboardInterrupt(f"VTAB fine-tuning interrupted by signal {result.interrupted_by}")
    return result


def run_task(model: nn.Module, train_dataset, test_dataset, settings: VTABSettings, *, device="cpu",
             precision: str = "fp32", eval_batch_size: int = 256, progress: bool = True, work_dir=None) -> dict:
    """Fine-tune `model` (already given a head for the task's classes) on the 800 and report val/test accuracy."""
    preprocessing = of_model(model)
    if settings.image_size:
        preprocessing = preprocessing.replace(image_size=settings.image_size)
    train_idx, val_idx = split_1k(len(train_dataset), settings.train_images, settings.val_images, settings.seed)
    images, labels = load_uint8(train_dataset, train_idx, preprocessing)
    val_images, val_labels = load_uint8(train_dataset, val_idx, preprocessing)
    result = finetune(model, images, labels, val_images, val_labels, settings, preprocessing=preprocessing,
                      device=device, precision=precision, work_dir=work_dir)
    batches = EvalBatches(test_dataset, preprocessing=preprocessing, batch_size=eval_batch_size)
    test = evaluate(model, batches, device=device, precision=precision, ks=(1,), progress=progress, desc="test")
    return {"val_accuracy": result.last_metric, "test_accuracy": test["top1"], "num_train": len(train_idx),
            "num_val": len(val_idx), "num_test": test["num_samples"], "final_loss": result.losses[-1],
            "first_loss": result.losses[0], "settings": asdict(settings)}


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
