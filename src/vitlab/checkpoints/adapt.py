"""Adapting a loaded model for fine-tuning: a new resolution, a new head."""

from __future__ import annotations

from torch import nn

from ..models import ViTConfig


def adapt_model(model: nn.Module, *, num_classes: int | None = None, image_size=None,
                posemb_method: str = "official", keep_pre_logits: bool = False) -> nn.Module:
    cfg = model.config
    if image_size is not None and isinstance(cfg, ViTConfig):
        set_image_size(model, image_size, posemb_method)
    elif image_size is not None:
        cfg.image_size = image_size
    if num_classes is not None and num_classes != cfg.num_classes:
        if not keep_pre_logits:
            drop_pre_logits(model)
        replace_head(model, num_classes)
    return model


def reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    """The paper's fine-tuning head, always fresh: the pre-training hidden layer (pre-logits) dropped and a
    zero-initialised linear layer for `num_classes` (the one rule of `vitlab train` and `vitlab vtab`)."""
    drop_pre_logits(model)
    replace_head(model, num_classes)
    return model


def drop_pre_logits(model: nn.Module) -> None:
    """The paper drops the pre-training head's hidden layer when fine-tuning."""
    cfg = model.config
    if isinstance(cfg, ViTConfig) and model.pre_logits is not None:
        model.pre_logits = None
        model.num_features = cfg.width
        cfg.representation_size = None


def set_image_size(model: nn.Module, image_size, method: str = "official") -> None:
    """Resample the learned position embeddings (of whichever variant) to the patch grid of `image_size`."""
    model.set_image_size(image_size, method)


def replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    features = model.num_features
    model.head = nn.Linear(features, num_classes) if num_classes else nn.Identity()
    if num_classes:
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    model.num_classes = model.config.num_classes = num_classes
