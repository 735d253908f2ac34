"""What every training objective is: a module that turns (model, images, targets) into a scalar loss.

The Trainer trains `TrainingModule(model, objective)`: the ViT (the encoder, saved as a normal vitlab
checkpoint) and the objective's own trainable parts (MPP's [mask] embedding and head, MAE's decoder,
saved beside it as objective.safetensors). Wrapping the two as one module puts the objective's parameters
in the optimiser, the gradient all-reduce, the EMA and the checkpoint like any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ...runtime import all_reduce_floats, autocast

ENCODER, OBJECTIVE = "model.", "objective."
# beside a checkpoint's model.safetensors: the objective's name and settings, and its own weights
RECORD_FILE, WEIGHTS_FILE = "objective.json", "objective.safetensors"


class Objective(nn.Module):
    """Subclasses set `name`, `metric` (the validation metric the Trainer reports as last / best) and
    `higher_is_better`, and implement `forward` and `evaluate`."""

    name = "objective"
    metric = "eval_accuracy"
    higher_is_better = True
    reads_labels = True  # False: targets are ignored (self-supervised)

    def __init__(self, settings=None):
        super().__init__()
        self.settings = settings

    def forward(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None):
        """The loss (a scalar tensor), or (loss, {name: scalar tensor}) to log more than the loss."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, d, *, precision: str = "fp32") -> dict[str, float]:
        """Validation metrics over `loader`, summed over ranks; keys start with 'eval_'."""
        raise NotImplementedError

    def illustrate(self, model: nn.Module, images: torch.Tensor, generator=None) -> dict:
        """For `vitlab inspect`: {panel title: pixel images (B, C, H, W) 0..255, ..., "marks": (B, N) ints}
        showing what the objective hides and predicts. Self-supervised objectives only."""
        raise NotImplementedError(f"the {self.name} objective draws no predictions")

    def record(self) -> dict:
        """What objective.json keeps: enough to rebuild this objective for inspection."""
        settings = dataclasses.asdict(self.settings) if dataclasses.is_dataclass(self.settings) else {}
        return {"name": self.name, "settings": settings}

    def no_weight_decay(self) -> set[str]:
        return set()

    def run_state(self) -> dict:
        """What the run's checkpoint keeps (beside the trainer's state) to check a resume against."""
        return {}

    def check_resume(self, saved: dict, checkpoint) -> None:
        """Refuse (ConfigError) to resume from `checkpoint`, whose saved state is `saved`, if this objective would
        not continue the same training."""


class TrainingModule(nn.Module):
    """The model and its objective as one module: forward(images, targets) is the loss."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        return self.objective(self.model, images, targets if self.objective.reads_labels else None)

    def no_weight_decay(self) -> set[str]:
        names = {ENCODER + n for n in getattr(self.model, "no_weight_decay", set)()}
        return names | {OBJECTIVE + n for n in self.objective.no_weight_decay()}


@dataclass
class MaskedLoss:
    """A self-supervised loss over the masked patches of a batch: its mean, how many predictions it
    averages, and (for class targets) how many of them were right."""

    loss: torch.Tensor
    count: int
    correct: torch.Tensor | None = None


@torch.no_grad()
def evaluate_masked(objective, model, loader, d, *, precision: str = "fp32", seed: int = 0) -> dict[str, float]:
    """eval_loss (and eval_masked_accuracy for class targets) of a masking objective over `loader`.

    The masks come from a generator seeded afresh each time, so every evaluation hides the same patches
    and the run's own random stream is left untouched (a resumed run stays exact).
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=d.device).manual_seed(seed + d.rank)
    loss_sum = correct = count = 0.0
    for images, _ in loader:
        images = images.to(d.device, non_blocking=True)
        with autocast(d.device, precision):
            # through __call__, so that FSDP gathers the objective's sharded parameters
            out = objective(model, images, None, generator=generator, details=True)
        loss_sum += float(out.loss) * out.count
        count += out.count
        correct += float(out.correct) if out.correct is not None else 0.0
    model.train(was_training)
    loss_sum, correct, count = all_reduce_floats([loss_sum, correct, count])
    metrics = {"eval_loss": loss_sum / max(count, 1)}
    if objective.metric == "eval_masked_accuracy":
        metrics["eval_masked_accuracy"] = correct / max(count, 1)
    return metrics


def loss_and_logs(output) -> tuple[torch.Tensor, dict]:
    """An objective's output as (loss, logs)."""
    if isinstance(output, tuple):
        return output[0], dict(output[1])
    return output, {}


def split_state_dict(state: dict) -> tuple[dict, dict]:
    """A TrainingModule's state dict as (the encoder's, the objective's), each without its prefix."""
    model = {k[len(ENCODER):]: v for k, v in state.items() if k.startswith(ENCODER)}
    objective = {k[len(OBJECTIVE):]: v for k, v in state.items() if k.startswith(OBJECTIVE)}
    unknown = set(state) - {ENCODER + k for k in model} - {OBJECTIVE + k for k in objective}
    if unknown:
        raise ValueError(f"state dict keys outside the model and the objective: {sorted(unknown)[:5]}")
    return model, objective


def join_state_dicts(model: dict, objective: dict) -> dict:
    return {**{ENCODER + k: v for k, v in model.items()}, **{OBJECTIVE + k: v for k, v in objective.items()}}
