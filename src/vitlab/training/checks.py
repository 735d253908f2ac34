"""The checks a training config passes before any work starts: each value against its field's type (`coerce`),
then what the values mean together (`validate`): choices, ranges, one owner for each setting, the checkpoints and
data it names, a resumed run's architecture and, through `training.memory`, whether it fits the machine.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Union

from ..runtime import RuntimeSettingError, check_precision
from .errors import ConfigError
from .memory import check_memory
from .objectives.settings import check as check_objective
from .tracking import check as check_log

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


def _type_name(typ) -> str:
    return getattr(typ, "__name__", str(typ)).replace("NoneType", "none")


def coerce(value, typ, key: str):
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
                return coerce(value, option, key)
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
        items = [coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types or [Any] * len(value)))]
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
    if not cfg.run_dir.strip():
        raise ConfigError("run_dir is empty; give the folder the run writes to")
    _check_model(cfg)
    _check_precision(cfg)
    _check_objective(cfg)
    loop = cfg.train
    if (loop.steps is None) == (loop.epochs is None):
        raise ConfigError("give exactly one of train.steps and train.epochs")
    if loop.max_minutes is not None and not loop.max_minutes > 0:
        raise ConfigError(f"train.max_minutes must be > 0, not {loop.max_minutes}")
    if cfg.schedule.follow_time and loop.max_minutes is None:
        raise ConfigError("schedule.follow_time = true needs a time budget: set train.max_minutes")
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
    return {key: coerce(value, hints[key], f"model.overrides.{key}") if key in hints else value
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
    elif init_meta is not None:  # a vitlab checkpoint says its architecture: the checks need no weights
        check_built_objective(cfg, _init_config(cfg, init_meta))
        check_memory(cfg, _init_config(cfg, init_meta))


def check_built_objective(cfg: TrainConfig, model_config) -> None:
    """The objective against the model as built (from model.init its architecture is the checkpoint's)."""
    problems = check_objective(cfg.objective, cfg.model.overrides, model_config)
    if problems:
        where = f"model.init = {cfg.model.init!r}: " if cfg.model.init is not None else ""
        raise ConfigError(where + problems[0])


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
