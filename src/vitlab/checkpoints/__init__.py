"""Checkpoints: reading every ViT weight format into our model, and writing ours and theirs."""

from .errors import CheckpointError
from .export import convert, export_checkpoint
from .load import detect_format, load_checkpoint, load_pretrained
from .vitlab_format import save_pretrained

__all__ = ["CheckpointError", "convert", "detect_format", "export_checkpoint", "load_checkpoint", "load_pretrained",
           "save_pretrained"]
