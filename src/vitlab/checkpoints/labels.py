"""A model's class names: the checkpoint's, ImageNet-1k's for a 1000-class model without them, else 'class N'."""

from __future__ import annotations

from importlib import resources

from torch import nn

IMAGENET1K_CLASSES = "imagenet1k_classes.txt"


def imagenet1k_class_names() -> list[str]:
    text = resources.files("vitlab").joinpath("resources", IMAGENET1K_CLASSES).read_text(encoding="utf-8")
    names = text.splitlines()
    assert len(names) == 1000, f"{IMAGENET1K_CLASSES} has {len(names)} lines, expected 1000"
    return names


def label_names(model: nn.Module) -> list[str]:
    """The checkpoint's label names; ImageNet-1k's for a 1000-class model without them; else 'class N'."""
    num_classes = model.num_classes
    names = getattr(model, "label_names", None)
    if names and len(names) == num_classes:
        return list(names)
    if num_classes == 1000:
        return imagenet1k_class_names()
    return [f"class {i}" for i in range(num_classes)]
