"""`load_pretrained`: find out what a checkpoint is, load it, adapt it to the requested resolution and head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .adapt import adapt_model
from .vitlab_format import is_vitlab_checkpoint, load_vitlab


def load_pretrained(path: str | Path, *, num_classes: int | None = None, image_size=None, **overrides) -> nn.Module:
    """Load any supported checkpoint into a vitlab model.

    `image_size` other than the checkpoint's resamples the position embeddings; `num_classes` other than the
    checkpoint's replaces the head with a zero-initialised one (the paper's fine-tuning head).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_vitlab_checkpoint(path):
        model = load_vitlab(path, **overrides)
    else:
        raise ValueError(f"{path}: not a checkpoint format vitlab recognises")
    return adapt_model(model, num_classes=num_classes, image_size=image_size)
