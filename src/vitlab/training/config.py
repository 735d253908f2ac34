"""TrainConfig: one training run as plain fields, read from TOML or YAML (a recipe's bases merged in), checked
before any work starts (`training.checks`).

A config file has the top-level keys `run_dir` and `seed` and one table per section below; `[data]` is
`vitlab.data.DataConfig`. `--set section.key=value` overrides a key, the value parsed as TOML (so `0.1`,
`true`, `[0.9, 0.999]`, `"text"`; a bare word is a string; `none` clears an optional key).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..data import DataConfig, DataError
from ..runtime import launch_env
from .checks import coerce, validate
from .errors import ConfigError
from .objectives.settings import ObjectiveConfig
from .tracking import LogConfig


@dataclass
class ModelConfig:
    name: str = "ViT-Ti/16"  # the paper's notation, see `vitlab models`
    overrides: dict = field(default_factory=dict)  # ViTConfig fields: patch_size, width, depth, drop_path, ...
    init: Optional[str] = None  # fine-tune from this checkpoint (any format load_pretrained reads)
    reset_head: bool = True  # with init: a new zero-initialised head (and no pre-logits), as the paper does
    grad_checkpointing: bool = False  # recompute activations in the backward pass to save memory


@dataclass
class OptimConfig:
    name: str = "adamw"  # adam | adamw | sgd | adagrad
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.0
    decay_all: bool = False  # also decay biases, norms, position embeddings and the class token
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8  # adam, adamw (adagrad uses 1e-10)
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    layer_decay: Optional[float] = None  # layer-wise lr decay: block i gets lr * decay ** (depth + 1 - layer)
    implementation: str = "auto"  # auto | fused | foreach | for-loop


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0  # linear warm-up from 0 to optim.lr
    decay: str = "cosine"  # cosine | linear | constant, from the end of warm-up to the last step
    end_factor: float = 0.0  # the learning rate at the last step, as a fraction of optim.lr
    follow_time: bool = False  # with train.max_minutes: decay by time spent where it is ahead of steps done,
    #                            so the learning rate reaches end_factor by the time budget on a slower machine


@dataclass
class LossConfig:
    kind: str = "softmax"  # softmax cross-entropy, or sigmoid (binary cross-entropy per class, multi-label)
    label_smoothing: float = 0.0  # for integer targets; the loader's data.label_smoothing smooths soft ones


@dataclass
class TrainSettings:
    """The [train] table: how long to train, how each step runs, and when to log, evaluate and save."""

    steps: Optional[int] = None  # optimiser steps; or give epochs
    epochs: Optional[float] = None
    max_minutes: Optional[float] = None  # stop (evaluate, save) once training has taken this long, resumes included
    accumulation_steps: int = 1  # micro-batches per optimiser step (data.batch_size is the global batch)
    clip_grad_norm: Optional[float] = 1.0  # clip the global gradient norm to this; 0 (or none) = off
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the device has it natively); autocast, fp32 weights, optimiser
    compile: bool = False  # torch.compile the model
    ema_decay: Optional[float] = None  # Polyak/EMA averaging of the weights (the paper: 0.9999)
    on_nan: str = "stop"  # stop | skip: what a NaN or infinite loss does
    log_every: int = 50  # steps between metric lines
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # the last K checkpoints are kept
    plot: bool = True  # write the training-curve PNG


@dataclass
class DistributedConfig:
    strategy: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard per block, for ViT-L / ViT-H)
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class TrainConfig:
    run_dir: str = "runs/train"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # classification, mpp, mae, distillation
    log: LogConfig = field(default_factory=LogConfig)  # experiment trackers (training/tracking.py)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- reading ------------------------------------------------------------------------------------------
def find_config(spec: str | Path) -> Path:
    """The config file `spec` names: a file that exists, else the recipe of that name shipped with vitlab."""
    from .. import recipes

    path = Path(spec)
    if path.is_file():
        return path
    recipe = recipes.path_of(str(spec))
    if recipe is not None:
        return recipe
    close = difflib.get_close_matches(path.stem, recipes.names(), n=1)
    hint = f"; did you mean the recipe {close[0]!r}?" if close else ""
    raise ConfigError(f"config file not found, nor a recipe of that name: {spec}{hint} "
                      "(`vitlab recipes` lists the recipes)")


MAX_BASES = 64  # files in one chain of `base =` (the recipes use at most 3)


def read_file(path: str | Path, *, _seen: tuple[Path, ...] = ()) -> dict:
    """The settings of a config file, with its `base = "other.toml"` (relative to this file) merged underneath.
    A file's `description` is a line about it for people (`vitlab recipes` prints it), not a setting."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_seen[-1]})" if _seen else ""))
    raw = parse_file(path)
    description = raw.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description must be one line of text, not {description!r}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base must be the path of another config file, not {base!r}")
    base_path = path.parent / base
    chain = (*_seen, path.resolve())
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise ConfigError(f"{path}: base = {base!r} makes a cycle ({cycle}); remove one of the base keys")
    if len(chain) >= MAX_BASES:
        raise ConfigError(f"{chain[0]}: its chain of base files is more than {MAX_BASES} deep (at {path}); "
                          "merge some of them")
    return deep_merge(read_file(base_path, _seen=chain), raw)


def parse_file(path: Path) -> dict:
    """One file's own table (TOML or YAML), refused with the reason when it is not a table of UTF-8 text."""
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: a config must be .toml, .yaml or .yml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a table of settings (key: value), not a "
                          f"{type(raw).__name__}")
    return raw


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`: tables merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 0.0003); the value is read as TOML, else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set optim.lr=3e-4")
    raw = raw.strip()
    if raw.lower() in ("none", "null"):
        value = None
    else:
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text}: {part} is not a table")
        table[path[-1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = (), *, world_size: int | None = None,
                check_paths: bool = True) -> TrainConfig:
    """Read a config file (or start from the defaults), apply --set overrides, check everything."""
    raw = read_file(find_config(path)) if path is not None else {}
    if path is not None and "run_dir" not in raw:
        raw["run_dir"] = str(Path("runs") / Path(path).stem)
    cfg = from_dict(apply_overrides(raw, list(overrides)))
    if world_size is None:
        world_size = launch_env().world_size
    return validate(cfg, world_size=world_size, check_paths=check_paths)


# ---- typed construction -------------------------------------------------------------------------------
def from_dict(raw: dict) -> TrainConfig:
    return _build(TrainConfig, read_old_normalize(read_old_distill(raw)), "")


def read_old_normalize(raw: dict) -> dict:
    """`data.normalize`, the old name of `data.normalisation` (the record's spelling). Read for one release."""
    data = raw.get("data")
    if not isinstance(data, dict) or "normalize" not in data:
        return raw
    if "normalisation" in data:
        raise ConfigError("data.normalize is the old name of data.normalisation: set normalisation only")
    print("note: data.normalize is now data.normalisation (the old key goes in the next release)", file=sys.stderr)
    data = {("normalisation" if k == "normalize" else k): v for k, v in data.items()}
    return {**raw, "data": data}


def read_old_distill(raw: dict) -> dict:
    """A config with the old `[distill]` table, as `[objective] name = "distillation"` with its settings in
    `[objective.distillation]` (a table without a teacher distilled nothing, as before). Read for one release."""
    if "distill" not in raw:
        return raw
    raw = dict(raw)
    old = raw.pop("distill")
    print('note: [distill] is now [objective] name = "distillation" with [objective.distillation] (the old table '
          "goes in the next release)", file=sys.stderr)
    if not isinstance(old, dict):
        raise ConfigError(f"distill must be a table, not {old!r}")
    if old.get("teacher") is None:
        return raw
    objective = dict(raw.get("objective") or {})
    if objective.get("name", "classification") != "classification":
        raise ConfigError(f"distill.teacher needs objective.name = 'classification' (a teacher predicts classes), "
                          f"not {objective['name']!r}")
    settings = objective.get("distillation")
    objective.update(name="distillation", distillation={**(settings if isinstance(settings, dict) else {}), **old})
    return {**raw, "objective": objective}


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, not {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, typ, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except DataError as e:
        raise ConfigError(str(e)) from None


# ---- writing ------------------------------------------------------------------------------------------
def to_yaml(cfg: TrainConfig) -> str:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
