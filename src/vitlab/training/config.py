"""TrainConfig: one training run as plain fields, read from TOML or YAML, checked before any work starts.

A config file has the top-level keys `run_dir` and `seed` and one table per section below; `[data]` is
`vitlab.data.DataConfig`. `--set section.key=value` overrides a key, the value parsed as TOML (so `0.1`,
`true`, `[0.9, 0.999]`, `"text"`; a bare word is a string; `none` clears an optional key).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..data import DataConfig, DataError
from ..runtime import RuntimeSettingError, check_precision, launch_env
from .errors import ConfigError
from .objectives.settings import ObjectiveConfig
from .objectives.settings import check as check_objective
from .tracking import LogConfig
from .tracking import check as check_log


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
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 on a GPU that has it); autocast, fp32 weights and optimiser
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


CHOICES = {
    "optim.name": ("adam", "adamw", "sgd", "adagrad"),
    "optim.implementation": ("auto", "fused", "foreach", "for-loop"),
    "schedule.decay": ("cosine", "linear", "constant"),
    "loss.kind": ("softmax", "sigmoid"),
    "train.on_nan": ("stop", "skip"),
    "distributed.strategy": ("ddp", "fsdp"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    "distributed.device": ("auto", "cpu", "cuda"),
}


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
    return _build(TrainConfig, read_old_distill(raw), "")


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
            kwargs[key] = _coerce(value, typ, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _type_name(typ) -> str:
    return getattr(typ, "__name__", str(typ)).replace("NoneType", "none")


def _coerce(value, typ, key: str):
    """Check `value` against the field type `typ` (TOML/YAML give lists for tuples; ints are floats too)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    ok = None
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"{key} = {value} is not a finite number; give a real number")
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is dict or origin is dict:
        ok = isinstance(value, dict)
    elif origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, not {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key} must hold {len(args)} values, not {len(value)}: {value!r}")
        item_types = [args[0]] * len(value) if args and (origin is list or args[-1] is Ellipsis) else args
        items = [_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types or [Any] * len(value)))]
        return tuple(items) if origin is tuple else items
    if ok is None:
        return value
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(typ)}, not {type(value).__name__} {value!r}")
    return value


# ---- semantic checks ------------------------------------------------------------------------------------
def validate(cfg: TrainConfig, *, world_size: int = 1, check_paths: bool = True) -> TrainConfig:
    """Refuse a config that cannot run, before any model is built or file read."""
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{dotted} = {value!r} is not one of {', '.join(allowed)}{hint}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, not {cfg.seed}")
    _check_model(cfg)
    _check_precision(cfg)
    _check_objective(cfg)
    loop = cfg.train
    if (loop.steps is None) == (loop.epochs is None):
        raise ConfigError("give exactly one of train.steps and train.epochs")
    if loop.max_minutes is not None and not loop.max_minutes > 0:
        raise ConfigError(f"train.max_minutes must be > 0, not {loop.max_minutes}")
    if loop.steps is not None and loop.steps < 1:
        raise ConfigError(f"train.steps must be >= 1, not {loop.steps}")
    if loop.epochs is not None and not loop.epochs > 0:
        raise ConfigError(f"train.epochs must be > 0, not {loop.epochs}")
    for key in ("accumulation_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(loop, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, not {getattr(loop, key)}")
    if loop.eval_every < 0:
        raise ConfigError(f"train.eval_every must be >= 0 (0: only at the end), not {loop.eval_every}")
    if loop.ema_decay is not None and not 0.0 < loop.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1), not {loop.ema_decay}")
    if loop.clip_grad_norm is not None and not loop.clip_grad_norm >= 0:
        raise ConfigError(f"train.clip_grad_norm must be >= 0 (0: off), not {loop.clip_grad_norm}")
    _check_optim(cfg)
    if cfg.schedule.warmup_steps < 0 or not 0.0 <= cfg.schedule.end_factor <= 1.0:
        raise ConfigError("schedule.warmup_steps must be >= 0 and schedule.end_factor in [0, 1]")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing must be in [0, 1), not {cfg.loss.label_smoothing}")
    if cfg.loss.label_smoothing > 0 and cfg.data.label_smoothing > 0:
        raise ConfigError("set label smoothing once: loss.label_smoothing or data.label_smoothing, not both")
    problems = check_log(cfg.log)  # a tracker that is not installed is refused here, before any work
    if problems:
        raise ConfigError(problems[0])
    per_step = world_size * loop.accumulation_steps
    if cfg.data.batch_size % per_step:
        raise ConfigError(
            f"data.batch_size {cfg.data.batch_size} (the global batch) is not divisible by world size {world_size} "
            f"x train.accumulation_steps {loop.accumulation_steps} = {per_step}")
    if check_paths:
        _check_paths(cfg)
    return cfg


def _check_precision(cfg: TrainConfig) -> None:
    try:
        cfg.train.precision = check_precision(cfg.train.precision)
    except RuntimeSettingError as e:
        raise ConfigError(f"train.precision: {e}") from None
    if cfg.train.precision == "fp16":
        raise ConfigError("train.precision: fp16 training needs loss scaling, which vitlab's trainer does not do; "
                          "use bf16 (or auto)")


def _check_model(cfg: TrainConfig) -> None:
    from ..models.registry import canonical_name, model_config

    try:
        name = canonical_name(cfg.model.name)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"model.name: {e}") from None
    cfg.model.overrides = _typed_overrides(name, cfg.model.overrides)
    _check_one_owner(cfg)
    if cfg.model.init is not None:
        return  # the architecture comes from the checkpoint; load_pretrained checks the overrides
    try:
        model_config(name, **architecture(cfg)).validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.overrides: {e}") from None


def _check_objective(cfg: TrainConfig) -> None:
    known = None  # the model's config, when it is known before any model is built (not from model.init)
    if cfg.model.init is None:
        from ..models.registry import canonical_name, model_config

        known = model_config(canonical_name(cfg.model.name), **architecture(cfg))
    problems = check_objective(cfg.objective, cfg.model.overrides, known)
    if problems:
        raise ConfigError(problems[0])


# The [data] section owns the input geometry; the data set owns the class count (see `_check_one_owner`).
OWNED_BY_DATA = {"image_size": "data.image_size", "in_chans": "data.in_chans"}
KNOWN_NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def architecture(cfg: TrainConfig, num_classes: int | None = None) -> dict:
    """The ViTConfig overrides a run builds its model with: [data]'s geometry, then model.overrides."""
    kwargs = {"image_size": cfg.data.image_size, "in_chans": cfg.data.in_chans, **cfg.model.overrides}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return kwargs


def _typed_overrides(name: str, overrides: dict) -> dict:
    """model.overrides checked against the model config's field types (width = 64.5 is not an integer)."""
    from ..models.registry import model_config

    hints = typing.get_type_hints(type(model_config(name)))
    return {key: _coerce(value, hints[key], f"model.overrides.{key}") if key in hints else value
            for key, value in overrides.items()}


def _check_one_owner(cfg: TrainConfig) -> None:
    """image_size and in_chans are set in [data], num_classes by the data set: model.overrides may not differ."""
    for key, owner in OWNED_BY_DATA.items():
        value, data_value = cfg.model.overrides.get(key), getattr(cfg.data, key)
        if value is not None and _normalise_size(value) != _normalise_size(data_value):
            raise ConfigError(f"model.overrides.{key} = {value!r} conflicts with {owner} = {data_value!r}: "
                              f"set it once, in {owner} (remove it from model.overrides)")
    num_classes = cfg.model.overrides.get("num_classes")
    from ..data import parse_spec

    kind, _ = parse_spec(cfg.data.dataset)
    known = KNOWN_NUM_CLASSES.get(kind)
    if num_classes is not None and known is not None and num_classes != known:
        raise ConfigError(f"model.overrides.num_classes = {num_classes} conflicts with data.dataset = "
                          f"{cfg.data.dataset!r}, which has {known} classes: the data set sets the class count "
                          "(remove num_classes from model.overrides)")


def _normalise_size(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _check_optim(cfg: TrainConfig) -> None:
    o = cfg.optim
    if not o.lr > 0 or not math.isfinite(o.lr):
        raise ConfigError(f"optim.lr must be a positive number, not {o.lr}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, not {o.weight_decay}")
    if not o.eps > 0:
        raise ConfigError(f"optim.eps must be > 0 (it keeps the update's denominator away from zero), not {o.eps}")
    if not 0.0 <= o.momentum < 1.0:
        raise ConfigError(f"optim.momentum must be in [0, 1), not {o.momentum}")
    if o.name == "sgd" and o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov = true needs optim.momentum > 0 (Nesterov momentum without momentum "
                          "is undefined); set optim.momentum (e.g. 0.9) or nesterov = false")
    if o.layer_decay is not None and not 0.0 < o.layer_decay <= 1.0:
        raise ConfigError(f"optim.layer_decay must be in (0, 1], not {o.layer_decay}")
    if not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas must be in [0, 1), not {list(o.betas)}")


def _check_paths(cfg: TrainConfig) -> None:
    if cfg.objective.name == "distillation":
        _check_checkpoint("objective.distillation.teacher", cfg.objective.distillation.teacher)
    init_meta = _check_checkpoint("model.init", cfg.model.init) if cfg.model.init is not None else None
    spec = cfg.data.dataset
    kind, _, location = spec.partition(":")
    if kind == "folder" and not Path(location).is_dir():
        raise ConfigError(f"data.dataset: folder not found: {location}")
    if kind == "shards":
        parent = Path(location).parent
        if "://" not in location and not parent.is_dir():
            raise ConfigError(f"data.dataset: shard directory not found: {parent}")
    if cfg.data.root is not None and not Path(cfg.data.root).exists():
        raise ConfigError(f"data.root: not found: {cfg.data.root}")
    if cfg.model.init is None:
        check_resume_architecture(cfg, _planned_config(cfg), ignore=("num_classes",))
        check_memory(cfg, _planned_config(cfg))
    elif init_meta is not None:  # a vitlab checkpoint says its architecture: the estimate needs no weights
        check_memory(cfg, _init_config(cfg, init_meta))


def _check_checkpoint(key: str, init: str) -> dict | None:
    """A checkpoint the config names must be one load_pretrained reads (its format recognised, a vitlab config
    readable); returns a vitlab checkpoint's config.json."""
    from ..checkpoints import CheckpointError, detect_format
    from ..checkpoints.load import latest_run_checkpoint
    from ..checkpoints.remote import is_remote
    from ..checkpoints.vitlab_format import read_config

    path = Path(init)
    if not path.exists() and is_remote(init):
        return None  # hf-hub:, a URL or an official name: fetched (and checked) when training starts
    if not path.exists():
        raise ConfigError(f"{key}: checkpoint not found: {init} (nor hf-hub:ORG/NAME, a URL or an official name)")
    try:
        if detect_format(path) == "vitlab":
            return read_config(latest_run_checkpoint(path) or path)
    except (CheckpointError, OSError) as e:
        raise ConfigError(f"{key} = {init!r} is not a checkpoint vitlab can load: {e}") from None
    return None


def _init_config(cfg: TrainConfig, meta: dict):
    """The architecture fine-tuning from a vitlab checkpoint builds: its own, at data.image_size, with overrides."""
    from ..models import BiTConfig, ViTConfig

    config_cls = BiTConfig if meta.get("architecture") == "bit" else ViTConfig
    overrides = {k: v for k, v in cfg.model.overrides.items() if k != "num_classes"}
    try:
        return config_cls.from_dict({**meta["config"], **overrides, "image_size": cfg.data.image_size})
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"model.init = {cfg.model.init!r}: {e}") from None


def _planned_config(cfg: TrainConfig):
    """The architecture a run without model.init builds (the class count is the data set's, not known here)."""
    from ..models.registry import model_config

    return model_config(cfg.model.name, **architecture(cfg))


# Fields that change the weights' shapes or meaning; a resumed run must keep them (dropout rates may change).
NOT_ARCHITECTURE = ("dropout", "attention_dropout", "drop_path", "patch_dropout", "dynamic_image_size",
                    "posemb_resample")


def check_resume_architecture(cfg: TrainConfig, planned, *, checkpoint: Path | None = None,
                              ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume run_dir's newest checkpoint into a model of a different architecture, naming the fields."""
    from .checkpointing import list_checkpoints

    if checkpoint is None:
        found = list_checkpoints(Path(cfg.run_dir))
        if not found:
            return
        checkpoint = found[-1]
    try:
        saved = json.loads((Path(checkpoint) / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable: the resume itself reports (and falls back from) a damaged checkpoint
    new = planned.to_dict()
    ignore = {*NOT_ARCHITECTURE, *ignore}
    differ = [k for k in new if k in saved and k not in ignore and _plain(saved[k]) != _plain(new[k])]
    if differ:
        fields = ", ".join(f"{k} {_plain(saved[k])!r} there, {_plain(new[k])!r} here" for k in differ)
        raise ConfigError(f"run_dir {cfg.run_dir} holds a run of a different model ({checkpoint}: {fields}); "
                          f"resume with the run's own settings, or start a new run_dir (model.init = "
                          f"{str(cfg.run_dir)!r} starts from its weights)")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# ---- will it fit? ---------------------------------------------------------------------------------------
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "adagrad": 1}  # fp32 tensors per parameter


def training_memory(cfg: TrainConfig, planned) -> dict[str, int]:
    """A lower bound on one process's training memory in bytes, before anything is allocated.

    Parameters, gradients, optimiser state and EMA in fp32, plus what backpropagation must keep of a ViT's
    activations: per block and token at least the two LayerNorm inputs, q|k|v, the attention output and the two
    MLP activations (gradient checkpointing keeps only each block's input, plus one block recomputed).
    """
    import torch

    from ..models.registry import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(planned).parameters())
    states = 2 + OPTIMIZER_STATES.get(cfg.optim.name, 2) + (1 if cfg.train.ema_decay else 0)
    world = launch_env().world_size
    micro = cfg.data.batch_size // max(world * cfg.train.accumulation_steps, 1)
    act_bytes = 4 if cfg.train.precision == "fp32" else 2  # a lower bound: auto may pick bf16
    width, mlp, depth = (getattr(planned, k, 0) for k in ("width", "mlp_dim", "depth"))
    grid = planned.grid_size if hasattr(planned, "grid_size") else (0, 0)
    tokens = grid[0] * grid[1]
    tokens = max(1, round(tokens * (1 - getattr(planned, "patch_dropout", 0.0)))) + getattr(planned, "num_prefix_tokens", 0)
    per_block = 4 * width + 2 * mlp
    kept = depth * width + per_block if cfg.model.grad_checkpointing else depth * per_block
    return {"weights": params * 4 * states, "activations": micro * tokens * kept * act_bytes,
            "inputs": micro * cfg.data.in_chans * cfg.data.image_size ** 2 * 4, "micro_batch": micro,
            "tokens": tokens}


def machine_memory(device: str) -> tuple[int, str] | None:
    """(bytes, where) of the memory training will run in: the GPU's, or this machine's RAM (cgroup limit too)."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        index = launch_env().local_rank
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {torch.cuda.get_device_name(index)}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        total = min(total, int(limit)) if limit.isdigit() else total
    except OSError:
        pass
    return total, "RAM"


def check_memory(cfg: TrainConfig, planned) -> None:
    """Refuse a run whose lower-bound memory need exceeds the machine's memory, with the numbers."""
    available = machine_memory(cfg.distributed.device)
    if available is None:
        return
    need = training_memory(cfg, planned)
    total = need["weights"] + need["activations"] + need["inputs"]
    if total <= available[0]:
        return
    gib = 2 ** 30
    raise ConfigError(
        f"model {cfg.model.name} at data.image_size = {cfg.data.image_size} needs at least {total / gib:,.1f} GiB "
        f"to train ({need['weights'] / gib:,.1f} GiB of weights, gradients and optimiser state; "
        f"{need['activations'] / gib:,.1f} GiB of activations for a micro-batch of {need['micro_batch']} images of "
        f"{need['tokens']:,} tokens) but this machine has {available[0] / gib:,.1f} GiB of {available[1]}: lower "
        "data.image_size or data.batch_size, raise train.accumulation_steps, or set model.grad_checkpointing = true")


# ---- writing ------------------------------------------------------------------------------------------
def to_yaml(cfg: TrainConfig) -> str:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
