"""Training objectives: what `vitlab train` minimises, chosen by the config's `[objective]` table.

- classification (default): cross-entropy of the model's logits against the labels;
- mpp: the paper's masked patch prediction (Section 4.6, Appendix B.1.2), self-supervised;
- mae: the masked autoencoder (He et al., 2021), self-supervised;
- distillation: DeiT's (Touvron et al., 2021), classification with a frozen teacher's predictions as a second target.

An objective is an `nn.Module` (see `base.Objective`): `loss = objective(model, images, targets)`,
`objective.evaluate(model, loader, d)` for the validation metrics, and its own trainable parts, which the
checkpoint keeps beside the encoder (objective.safetensors) so that model.safetensors stays a plain ViT.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ...data.preprocessing import Preprocessing
from .base import (RECORD_FILE, WEIGHTS_FILE, Objective, TrainingModule, join_state_dicts, loss_and_logs,
                   split_state_dict)
from .settings import NAMES, SELF_SUPERVISED, ObjectiveConfig


def head_classes(cfg: ObjectiveConfig, num_classes: int) -> int:
    """The size of the encoder's own classifier: none (0) for a self-supervised objective, which predicts
    with its own head; a later fine-tune (model.init) adds a fresh one."""
    return 0 if cfg.name in SELF_SUPERVISED else num_classes


def build_objective(cfg: ObjectiveConfig, *, model_config=None, preprocessing: Preprocessing | dict | None = None,
                    loss=None, device="cpu", precision: str = "fp32") -> Objective:
    """The objective `cfg` names. `model_config` (the encoder's ViTConfig) and `preprocessing` (the
    input normalisation) size and feed the self-supervised targets and the teacher; `loss` is the classification
    settings; `device` and `precision` are where and how a teacher runs."""
    if cfg.name == "classification":
        from .classification import Classification

        return Classification(loss.kind, loss.label_smoothing) if loss is not None else Classification()
    if cfg.name == "distillation":
        from .distillation import build_distillation

        return build_distillation(cfg.distillation, loss, num_classes=model_config.num_classes,
                                  in_chans=model_config.in_chans, device=device, precision=precision,
                                  preprocessing=preprocessing)
    if cfg.name == "mpp":
        from .mpp import MaskedPatchPrediction

        return MaskedPatchPrediction(cfg.mpp, model_config, preprocessing)
    if cfg.name == "mae":
        from .mae import MaskedAutoencoder

        return MaskedAutoencoder(cfg.mae, model_config, preprocessing)
    raise ValueError(f"unknown objective {cfg.name!r}: one of {', '.join(NAMES)}")


def load_objective(checkpoint: str | Path, model) -> Objective | None:
    """The self-supervised objective saved in a checkpoint directory beside `model` (its encoder), or None
    when it has none. For inspection: `objective.illustrate(model, images)`."""
    from safetensors.torch import load_file

    record_file, weights_file = Path(checkpoint) / RECORD_FILE, Path(checkpoint) / WEIGHTS_FILE
    if not record_file.is_file() or not weights_file.is_file():
        return None
    record = json.loads(record_file.read_text())
    name = record.get("name")
    if name not in SELF_SUPERVISED:
        return None
    cfg = ObjectiveConfig(name=name)
    settings_class = type(getattr(cfg, name))
    known = {f.name for f in dataclasses.fields(settings_class)}
    setattr(cfg, name, settings_class(**{k: v for k, v in record.get("settings", {}).items() if k in known}))
    objective = build_objective(cfg, model_config=model.config, preprocessing=getattr(model, "preprocessing", None))
    objective.load_state_dict(load_file(str(weights_file)))
    return objective.to(next(model.parameters()).device)


__all__ = ["NAMES", "Objective", "ObjectiveConfig", "TrainingModule", "build_objective", "head_classes",
           "join_state_dicts", "load_objective", "loss_and_logs", "split_state_dict"]
