"""`load_pretrained`: find out what a checkpoint is by looking inside it, load it, adapt it.

    `vitlab train` run dir   -> its newest checkpoints/step-N (vitlab format)
    folder with config.json  -> "format": "vitlab"  -> vitlab_format
                             -> "model_type": ...    -> hf (Hugging Face)
    .npz (zip of .npy)       -> npz_official (official and big_vision layouts)
    .safetensors/.pth/.bin   -> timm (or, with Hugging Face / vitlab names, a hint to pass the folder)
    folder with config.json  -> "architecture": ...  -> timm (a timm Hub repository)

A name or address (hf-hub:ORG/NAME, an http(s) URL, an official name) is fetched first (checkpoints/remote.py).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .adapt import adapt_model
from .errors import CheckpointError
from .files import read_json, read_tensors, sniff
from .hf import is_hf_folder, load_hf
from .npz_official import load_official_npz
from .remote import resolve
from .timm import is_timm_folder, is_timm_state_dict, load_timm, load_timm_folder
from .vitlab_format import WEIGHTS_FILE, is_vitlab_checkpoint, load_vitlab


def detect_format(path: str | Path) -> str:
    """'vitlab', 'hf', 'npz' or 'timm', from the file's contents (never from its name alone)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} is not a file or folder, nor hf-hub:ORG/NAME, an "
                                "http(s) URL or an official name (`vitlab models --pretrained` lists them)")
    if path.is_dir():
        if latest_run_checkpoint(path) is not None:
            return "vitlab"
        if is_vitlab_checkpoint(path):
            return "vitlab"
        if is_hf_folder(path):
            return "hf"
        if (path / "config.json").is_file() and is_timm_folder(path):
            return "timm"
        if (path / "config.json").is_file():
            meta = read_json(path / "config.json")  # names the file when it is not a JSON object
            if "pretrained_cfg" in meta and (path / WEIGHTS_FILE).is_file():  # timm's Hub layout
                return "timm"
            raise CheckpointError(f"{path / 'config.json'}: neither a vitlab config (\"format\": \"vitlab\"), a "
                                  "Hugging Face one (\"model_type\") nor timm's (\"pretrained_cfg\" beside "
                                  "model.safetensors)")
        if (path / WEIGHTS_FILE).is_file():
            return "timm"
        raise CheckpointError(f"{path}: not a checkpoint folder (no config.json); give a vitlab run or checkpoint "
                              "folder, a Hugging Face folder, or a checkpoint file")
    kind = sniff(path)
    if kind == "npz":
        return "npz"
    if kind in ("safetensors", "torch"):
        return "timm"
    raise CheckpointError(f"{path}: not a checkpoint vitlab recognises (expected an official/big_vision .npz, "
                          "a timm .safetensors/.pth/.bin state dict, or a vitlab / Hugging Face folder)")


def latest_run_checkpoint(path: Path) -> Path | None:
    """For a `vitlab train` run directory, its newest complete checkpoint (unfinished ones end in .partial)."""
    steps = sorted(p for p in (path / "checkpoints").glob("step-*") if p.is_dir() and p.suffix != ".partial")
    steps = [p for p in steps if is_vitlab_checkpoint(p)]
    return steps[-1] if steps and not is_vitlab_checkpoint(path) else None


def load_checkpoint(path: str | Path, image_size_hint=None, **overrides) -> nn.Module:
    """The model a checkpoint holds, exactly (no resampling, no new head), with its preprocessing record as
    `model.preprocessing` (a `vitlab.data.preprocessing.Preprocessing`, from the format's reader) and its
    `label_names`.

    `image_size_hint` tells a non-square resolution of a format that does not store it (npz, timm)."""
    path = resolve(path)
    fmt = detect_format(path)
    if path.is_dir() and (latest := latest_run_checkpoint(path)) is not None:
        path = latest
    model = read_model(fmt, path, image_size_hint, overrides)
    record = model.preprocessing  # each reader's own (Preprocessing)
    if record.label_names is not None and len(record.label_names) != model.num_classes:
        record = record.replace(label_names=None)
    model.preprocessing = record
    if getattr(model, "label_names", None) is None and record.label_names is not None:
        model.label_names = list(record.label_names)
    return model


def read_model(fmt: str, path: Path, image_size_hint, overrides: dict) -> nn.Module:
    if fmt == "vitlab":
        return load_vitlab(path, **overrides)
    if fmt == "hf":
        return load_hf(path, **overrides)
    if fmt == "npz":
        return load_official_npz(path, image_size_hint=image_size_hint, **overrides)
    if path.is_dir() and is_timm_folder(path):
        return load_timm_folder(path, image_size_hint=image_size_hint, **overrides)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    tensors = read_tensors(file)
    if not is_timm_state_dict(tensors):
        if any(k.startswith(("vit.", "embeddings.", "encoder.layer.")) for k in tensors):
            raise CheckpointError(f"{file}: Hugging Face ViT weights; pass the folder with its config.json instead")
    return load_timm(file, tensors, image_size_hint=image_size_hint, **overrides)


def load_pretrained(path: str | Path, *, num_classes: int | None = None, image_size=None,
                    posemb_method: str = "official", keep_pre_logits: bool = False, patch_size: int | None = None,
                    **overrides) -> nn.Module:
    """Load any supported checkpoint into a vitlab model: a local path, hf-hub:ORG/NAME[@REVISION], an
    http(s) URL, or an official name (`ViT-B_16`, `imagenet21k+imagenet2012/R50+ViT-B_16`, AugReg file names).

    `image_size` other than the checkpoint's resamples the position embeddings (`posemb_method`: 'official' =
    scipy.ndimage.zoom(order=1) on the grid, or 'bicubic' / 'bilinear' as timm and HF do); `num_classes` other
    than the checkpoint's replaces the head with a zero-initialised one and drops the pre-logits layer unless
    `keep_pre_logits`. `patch_size` other than the checkpoint's resizes the patch-embedding kernel by FlexiViT's
    pseudo-inverse resize, keeping the token grid (the image size scales with the patch; `image_size`, if given
    too, then resamples the grid). Other keyword arguments override the inferred config (e.g. `num_heads=`).
    """
    hint = image_size if patch_size is None else None  # the hint describes the checkpoint's own resolution
    model = load_checkpoint(path, image_size_hint=hint, **overrides)
    return adapt_model(model, num_classes=num_classes, image_size=image_size, posemb_method=posemb_method,
                       keep_pre_logits=keep_pre_logits, patch_size=patch_size)
