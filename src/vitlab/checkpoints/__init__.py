"""Checkpoints: reading every ViT weight format into our model, and writing ours."""

from .load import load_pretrained
from .vitlab_format import save_pretrained

__all__ = ["load_pretrained", "save_pretrained"]
