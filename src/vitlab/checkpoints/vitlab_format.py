"""vitlab's own checkpoint format: a directory with config.json and model.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.preprocessing import Preprocessing, model_defaults, of_model
from ..fileio import atomic_write, atomic_write_text
from ..models import BiTConfig, ViTConfig
from ..models.registry import build_model
from .errors import CheckpointError
from .files import read_json, read_safetensors
from .mapping import check_contents
from .model_card import current_command, model_card

FORMAT = "vitlab"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


def record_dict(preprocessing: Preprocessing | dict) -> dict:
    """The record as config.json keeps it: a plain dict (one given as a dict is written as it is)."""
    return preprocessing.to_dict() if isinstance(preprocessing, Preprocessing) else preprocessing


def save_pretrained(model: nn.Module, directory: str | Path, *, label_names: list[str] | None = None,
                    preprocessing: Preprocessing | dict | None = None, extra: dict | None = None,
                    metrics: dict | None = None,
                    command: str | None = None) -> Path:
    """Write `model` as directory/config.json + directory/model.safetensors + a README.md model card (each
    written atomically). `metrics` (e.g. the run's accuracy) and `command` (default: this process's `vitlab`
    command line, if it is one) go into the card."""
    from .. import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "vitlab_version": __version__,  # the release that wrote it
        "architecture": "bit" if isinstance(cfg, BiTConfig) else "vit",
        "config": cfg.to_dict(),
        "label_names": label_names if label_names is not None else getattr(model, "label_names", None),
        "preprocessing": record_dict(preprocessing) if preprocessing is not None else of_model(model).to_dict(),
    }
    if extra:
        meta.update(extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    card = model_card(cfg, sum(t.numel() for t in tensors.values()), label_names=meta["label_names"],
                      preprocessing=meta["preprocessing"], metrics=metrics,
                      command=command if command is not None else current_command())
    atomic_write_text(directory / CARD_FILE, card)
    return directory


def is_vitlab_checkpoint(path: str | Path) -> bool:
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        meta = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vitlab checkpoint (format is {meta.get('format')!r})")
    return meta


def load_vitlab(directory: str | Path, **overrides) -> nn.Module:
    """Build the model a vitlab checkpoint describes and load its weights exactly."""
    directory = Path(directory)
    meta = read_config(directory)
    cfg_dict = {**meta["config"], **overrides}
    config_cls = BiTConfig if meta.get("architecture") == "bit" else ViTConfig
    try:
        cfg = config_cls.from_dict(cfg_dict).validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {e}") from e
    with torch.device("meta"):
        model = build_model(cfg)
    weights = read_safetensors(directory / WEIGHTS_FILE)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_contents(directory / WEIGHTS_FILE, {k: tuple(v.shape) for k, v in weights.items()}, expected)
    model.load_state_dict(weights, strict=True, assign=True)
    model.label_names = meta.get("label_names")
    model.preprocessing = Preprocessing.from_dict(meta.get("preprocessing"), **model_defaults(model))
    return model
