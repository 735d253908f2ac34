"""Writing a model in any format, and `convert` (what `vitlab convert` runs)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import CheckpointError
from .hf import save_hf
from .load import load_pretrained
from .npz_official import save_official_npz
from .timm import save_timm
from .vitlab_format import save_pretrained

WRITERS = {"vitlab": save_pretrained, "hf": save_hf, "timm": save_timm, "npz": save_official_npz}
SINGLE_FILE = {"timm": ".safetensors", "npz": ".npz"}


def export_checkpoint(model: nn.Module, destination: str | Path, to: str) -> Path:
    """vitlab / hf: a folder; timm: a .safetensors file; npz: an .npz file (a folder gets model.<ext> inside)."""
    if to not in WRITERS:
        raise CheckpointError(f"unknown format {to!r}; expected one of {sorted(WRITERS)}")
    destination = Path(destination)
    if to in SINGLE_FILE and (destination.is_dir() or not destination.suffix):
        destination = destination / f"model{SINGLE_FILE[to]}"
    return WRITERS[to](model, destination)


def convert(source: str | Path, destination: str | Path, to: str, **load_kwargs) -> Path:
    model = load_pretrained(source, **load_kwargs)
    return export_checkpoint(model, destination, to)
