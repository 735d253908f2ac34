"""Writing a model in any format, and `convert` (what `vitlab convert` runs): one table of writers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .errors import CheckpointError
from .hf import save_hf
from .load import load_pretrained
from .npz_official import save_official_npz
from .onnx import export_onnx, sidecar_path
from .timm import save_timm
from .vitlab_format import save_pretrained


@dataclass(frozen=True)
class Writer:
    write: Callable[..., Path]  # (model, destination, **options) -> the path written
    single_file: str | None = None  # its extension: a destination that is a folder or has none gets model<ext>
    options: tuple[str, ...] = ()  # what it takes beyond the model and the destination
    beside: Callable[[Path], Path] | None = None  # a file it writes next to the one it returns


WRITERS = {
    "vitlab": Writer(save_pretrained),
    "hf": Writer(save_hf),
    "timm": Writer(save_timm, ".safetensors"),
    "npz": Writer(save_official_npz, ".npz"),
    # a graph for deployment, and the sidecar JSON that serving reads (labels, preprocessing, the model card);
    # quantize="int8", with calibration= batches of normalised pixels for static int8; source= the checkpoint,
    # whose run the model card describes. It names its own file: a folder gets model.onnx.
    "onnx": Writer(export_onnx, options=("quantize", "calibration", "source"), beside=sidecar_path),
}


def export_checkpoint(model: nn.Module, destination: str | Path, to: str, **options) -> Path:
    """vitlab / hf: a folder; timm: a .safetensors file; npz: an .npz file; onnx: an .onnx file and its .json
    sidecar (a folder gets model.<ext> inside). `options` (None: the writer's default) as WRITERS lists them."""
    if to not in WRITERS:
        raise CheckpointError(f"unknown format {to!r}; expected one of {sorted(WRITERS)}")
    writer = WRITERS[to]
    options = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(writer.options))
    if unknown:
        raise CheckpointError(f"the {to} format takes no {', '.join(unknown)}")
    destination = Path(destination)
    if writer.single_file and (destination.is_dir() or not destination.suffix):
        destination = destination / f"model{writer.single_file}"
    return writer.write(model, destination, **options)


def convert(source: str | Path, destination: str | Path, to: str, **load_kwargs) -> Path:
    model = load_pretrained(source, **load_kwargs)
    return export_checkpoint(model, destination, to)
