"""Reading tensors from files without ever unpickling code, and telling file kinds apart by their bytes."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CheckpointError


def sniff(path: Path) -> str:
    """'npz', 'torch' (zip or legacy pickle, read with weights_only), 'safetensors', or 'unknown'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: truncated or damaged zip archive ({e})") from e
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "unknown"
    if len(head) >= 9:  # safetensors: an 8-byte little-endian header length, then the JSON header
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format
        return "torch"
    return "unknown"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(f"{path}: holds pickled Python objects; refusing to unpickle them (only plain "
                                  "arrays are read from a checkpoint)") from e
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({e})") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or damaged .npz file ({e})") from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, so the checkpoint folder is incomplete (it needs its config.json "
                              "and model.safetensors); copy it again or use an earlier checkpoint")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or damaged safetensors file ({e})") from e


def read_torch(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.bin file, loaded with weights_only=True (no code is ever unpickled)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: this file needs Python code to be unpickled, which vitlab refuses to do (it reads only "
            f"tensors, with torch.load(weights_only=True)); re-save the state dict alone, e.g. as .safetensors. "
            f"Detail: {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or damaged PyTorch file ({e})") from e
    for container in ("state_dict", "model", "module"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(container), dict):
            obj = obj[container]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint (.safetensors, .pth or .bin)."""
    kind = sniff(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind == "torch":
        return read_torch(path)
    raise CheckpointError(f"{path}: not a safetensors or PyTorch checkpoint")


def read_json(path: Path) -> dict:
    """A JSON object (a config file); anything else is refused naming the file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(value).__name__}, not an object of settings")
    return value
