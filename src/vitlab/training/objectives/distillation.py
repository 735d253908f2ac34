"""DeiT distillation (Touvron et al., 2021): a teacher's predictions as a second target for the student.

The student is a ViT with a distillation token (`distill_token=True`): in training it returns two logits, its
class head's and its distillation head's. The class head learns the labels y; the distillation head learns the
teacher, which sees the same augmented batch in the same step, frozen and under no_grad:

    hard: (1 - alpha) CE(class, y) + alpha CE(dist, argmax teacher)                       DeiT: alpha = 1/2
    soft: (1 - alpha) CE(class, y) + alpha tau^2 KL(softmax(teacher/tau) || softmax(dist/tau))   tau 3, alpha 0.1

As in DeiT's code, the soft term's KL is summed and divided by batch x classes (the old "mean" reduction of
PyTorch's kl_div), not by the batch alone. A student without a distillation token (one output) uses that
output for both terms: DeiT's "usual distillation". At evaluation the model averages its two heads.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...evaluation.metrics import ClassificationCounts, count_predictions, top1_accuracy
from ...runtime import autocast
from ...data.preprocessing import Preprocessing
from ..errors import ConfigError
from ..losses import classification_loss
from .base import Objective
from .settings import DISTILL_MODES, DistillConfig

TEACHER_KEY = "objective.distillation.teacher"


def split_heads(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits, distillation logits) of a student's training output: a pair, or one tensor used twice."""
    if isinstance(outputs, torch.Tensor):
        return outputs, outputs
    class_logits, dist_logits = outputs
    return class_logits, dist_logits


def soft_distillation_term(dist_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 KL(softmax(teacher / tau) || softmax(student / tau)), summed over everything / (batch x classes)."""
    student = F.log_softmax(dist_logits.float() / tau, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    kl = F.kl_div(student, teacher, reduction="sum", log_target=True)
    return kl * tau**2 / dist_logits.numel()


def distillation_terms(outputs, targets: torch.Tensor, teacher_logits: torch.Tensor, *, mode: str, tau: float = 1.0,
                       kind: str = "softmax", label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the class head's loss against the labels, the distillation head's against the teacher).

    `targets` are what plain classification gets (class indices, or soft targets from mixup); `kind` and
    `label_smoothing` are the training config's loss settings, for the class head.
    """
    class_logits, dist_logits = split_heads(outputs)
    labels = classification_loss(class_logits, targets, kind, label_smoothing)
    if mode == "hard":
        return labels, F.cross_entropy(dist_logits.float(), teacher_logits.argmax(dim=-1))
    if mode == "soft":
        return labels, soft_distillation_term(dist_logits, teacher_logits, tau)
    raise ValueError(f"distillation mode must be one of {', '.join(DISTILL_MODES)}, not {mode!r}")


def distillation_loss(outputs, targets: torch.Tensor, teacher_logits: torch.Tensor, *, mode: str, alpha: float,
                      tau: float = 1.0, kind: str = "softmax", label_smoothing: float = 0.0) -> torch.Tensor:
    """DeiT's loss: (1 - alpha) x the class head's usual loss + alpha x the distillation head's term."""
    labels, teacher = distillation_terms(outputs, targets, teacher_logits, mode=mode, tau=tau, kind=kind,
                                         label_smoothing=label_smoothing)
    return (1.0 - alpha) * labels + alpha * teacher


# ---- the objective --------------------------------------------------------------------------------------------
class Distillation(Objective):
    """Classification with a teacher: DeiT's loss in training, the two heads' average in evaluation.

    The teacher is held outside the module tree on purpose: it is frozen and read again from its checkpoint
    when a run resumes, so it must not reach the optimiser, the EMA, DDP or the run's checkpoints.
    """

    name = "distillation"
    metric = "eval_accuracy"

    def __init__(self, settings: DistillConfig, teacher: "Teacher", kind: str = "softmax",
                 label_smoothing: float = 0.0):
        super().__init__(settings)
        object.__setattr__(self, "teacher", teacher)  # not registered as a submodule (see above)
        self.kind, self.label_smoothing = kind, label_smoothing

    def forward(self, model, images, targets):
        outputs = model.forward_heads(images) if has_distill_token(model) else model(images)
        teacher_logits = self.teacher(images)
        labels, teacher = distillation_terms(outputs, targets, teacher_logits, mode=self.settings.mode,
                                             tau=self.settings.tau, kind=self.kind,
                                             label_smoothing=self.label_smoothing)
        alpha = self.settings.weight
        return (1.0 - alpha) * labels + alpha * teacher, {"loss_labels": labels.detach(),
                                                          "loss_teacher": teacher.detach()}

    def evaluate(self, model, loader, d, *, precision="fp32"):
        return evaluate_heads(model, loader, d, precision=precision)

    def record(self) -> dict:
        return {**super().record(), "teacher_checkpoint": str(self.teacher.source)}

    def run_state(self) -> dict:
        return {"teacher": str(self.teacher.source)}  # which checkpoint taught this run

    def check_resume(self, saved: dict, checkpoint: Path) -> None:
        """A resumed distillation run must be taught by the checkpoint that started it (a teacher's run directory
        may have a newer checkpoint by now), or the resumed run would not continue the same training."""
        before, now = saved.get("teacher"), str(self.teacher.source)
        if before is not None and before != now:
            raise ConfigError(f"{TEACHER_KEY}: {checkpoint} was taught by {before}, which is not {now}; "
                              f"set {TEACHER_KEY}={before} to resume it exactly")


def has_distill_token(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "distill_token", False))


def head_logits(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A distilled ViT's predictions: the mean of its two heads (as DeiT evaluates) and each head alone."""
    class_logits, dist_logits = (h.float() for h in model.forward_heads(images))
    return {"eval_accuracy": (class_logits + dist_logits) / 2, "eval_accuracy_class_head": class_logits,
            "eval_accuracy_dist_head": dist_logits}


def evaluate_heads(model: nn.Module, loader, d, *, precision: str = "fp32") -> dict[str, float]:
    """Top-1 of the model as it predicts (a distilled ViT: the mean of its two heads), and of each head alone when
    it has two."""
    if not has_distill_token(model):
        return {"eval_accuracy": top1_accuracy(model, loader, d.device, precision)}
    counts = {name: ClassificationCounts(model.num_classes, ks=(1,), device=d.device)
              for name in ("eval_accuracy", "eval_accuracy_class_head", "eval_accuracy_dist_head")}
    counts = count_predictions(model, loader, counts, device=d.device, precision=precision, predict=head_logits)
    return {name: one.accuracy() for name, one in counts.items()}


# ---- the teacher ----------------------------------------------------------------------------------------------
class Teacher(nn.Module):
    """A frozen classifier whose predictions the student learns.

    Always in eval mode (a `train()` call on a parent module leaves it there), no parameter asks for a
    gradient, and its forward runs under no_grad with the student's precision. It converts the student's batch
    to what the teacher was trained on: another normalisation (from the checkpoint's preprocessing record) or
    another resolution.
    """

    def __init__(self, model: nn.Module, *, student_preprocessing: Preprocessing | dict | None = None,
                 precision: str = "fp32"):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.train(False)
        self.precision = precision
        # None where a record is unknown: the batch is then passed on as it is
        self.student_preprocessing = known_record(student_preprocessing)
        self.teacher_preprocessing = known_record(getattr(model, "preprocessing", None))
        size = getattr(model.config, "image_size", None)
        self.image_hw = (size, size) if isinstance(size, int) else tuple(size) if size else None
        self.source: Path | None = None  # the checkpoint it was read from

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.student_preprocessing is not None and self.teacher_preprocessing is not None:
            images = self.student_preprocessing.renormalise(images, self.teacher_preprocessing)
        if self.image_hw is not None and tuple(images.shape[-2:]) != self.image_hw:
            images = F.interpolate(images, size=self.image_hw, mode="bilinear", antialias=True, align_corners=False)
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.precision):
            logits = self.model(self.prepare(images))
        return logits.float()


def known_record(record: Preprocessing | dict | None) -> Preprocessing | None:
    """A preprocessing record, or None where there is none (an empty one says nothing either)."""
    return Preprocessing.coerce(record) if record else None


def load_teacher(path: str | Path, *, num_classes: int, in_chans: int, device: torch.device, precision: str,
                 student_preprocessing: Preprocessing | dict | None = None) -> Teacher:
    """Any checkpoint `load_pretrained` reads (a `vitlab train` run directory too) as a frozen teacher.

    A teacher that cannot teach this data (another number of classes or of input channels) is refused with a
    ConfigError naming `objective.distillation.teacher`."""
    from ...checkpoints import load_pretrained
    from ...checkpoints.load import latest_run_checkpoint
    from ...checkpoints.errors import CheckpointError

    try:
        model = load_pretrained(path)  # as given: a name or URL would not survive Path()
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{TEACHER_KEY}: {e}") from None
    teacher_classes, teacher_chans = int(model.config.num_classes), int(model.config.in_chans)
    if teacher_classes != num_classes:
        raise ConfigError(f"{TEACHER_KEY} {path}: predicts {teacher_classes} classes, but the data has {num_classes}")
    if teacher_chans != in_chans:
        raise ConfigError(f"{TEACHER_KEY} {path}: reads {teacher_chans}-channel images, but data.in_chans is "
                          f"{in_chans}")
    teacher = Teacher(model, student_preprocessing=student_preprocessing, precision=precision).to(device)
    local = Path(path)
    teacher.source = (local.is_dir() and latest_run_checkpoint(local)) or path
    return teacher


def build_distillation(settings: DistillConfig, loss, *, num_classes: int, in_chans: int, device: torch.device,
                       precision: str, preprocessing: Preprocessing | dict | None) -> Distillation:
    """The objective of `[objective.distillation]`; `loss` is the config's `[loss]` (the class head's settings)."""
    teacher = load_teacher(settings.teacher, num_classes=num_classes, in_chans=in_chans, device=device,
                           precision=precision, student_preprocessing=preprocessing)
    return Distillation(settings, teacher, loss.kind, loss.label_smoothing)
