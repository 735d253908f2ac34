"""Training checkpoints: everything needed to continue the same trajectory, written so a crash never corrupts.

run_dir/checkpoints/step-00001000/
    config.json, model.safetensors   the model in vitlab format (load_pretrained reads it)
    objective.json, objective.safetensors   the objective's own parts (MPP's head, MAE's decoder), if any
    ema/                             the EMA weights of both, in the same layout, when EMA is on
    optimizer.pt                     optimiser state (torch.save; read back with weights_only=True)
    rank-0.pt, rank-1.pt, ...        each rank's RNG and data-loader position
    trainer.json                     step, epoch, best accuracy, time spent

A checkpoint is written into `step-XXXXXXXX.partial/` (each file atomically), then renamed: a directory
without the suffix is always complete. Only the last `keep` are kept.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from ..checkpoints import save_pretrained
from ..checkpoints.vitlab_format import WEIGHTS_FILE
from ..fileio import atomic_write, atomic_write_text, fsync_dir
from ..runtime import Dist, barrier
from .objectives import join_state_dicts, split_state_dict

STEP_DIR = re.compile(r"^step-(\d{8})$")
OBJECTIVE_FILE, OBJECTIVE_RECORD = "objective.safetensors", "objective.json"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class WeightsSnapshot:
    """Just enough of a model for save_pretrained: its config and full (unsharded, CPU) weights."""

    config: object
    weights: dict
    label_names: list | None = None
    preprocessing: dict | None = None

    def state_dict(self) -> dict:
        return self.weights


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def save(run_dir: Path, step: int, *, model, optimizer, ema, loader, trainer_state: dict, model_config,
         label_names, preprocessing, d: Dist, keep: int, objective_record: dict | None = None) -> Path:
    """Collective: every rank calls it. Rank 0 writes the shared files, each rank its own RNG and loader state.

    `model` is the (wrapped) objectives.TrainingModule: the model and the objective's parts.
    """
    final = checkpoint_dir(run_dir) / f"step-{step:08d}"
    partial = final.with_name(final.name + ".partial")
    model_sd, objective_sd = split_state_dict(get_model_state_dict(model, options=FULL))
    optim_sd = get_optimizer_state_dict(model, optimizer, options=FULL)
    ema_sd, ema_objective_sd = split_state_dict(ema.full_state_dict()) if ema is not None else (None, None)
    if d.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    if d.is_main:
        snapshot = WeightsSnapshot(model_config, model_sd, label_names, preprocessing)
        save_pretrained(snapshot, partial)
        save_objective(partial, objective_record, objective_sd)
        if ema_sd is not None:
            save_pretrained(WeightsSnapshot(model_config, ema_sd, label_names, preprocessing), partial / "ema")
            save_objective(partial / "ema", objective_record, ema_objective_sd)
        atomic_write(partial / "optimizer.pt", lambda tmp: torch.save(optim_sd, tmp))
    rank_state = {"rng_cpu": torch.get_rng_state(), "loader": to_tensors(loader.state_dict())}
    if d.device.type == "cuda":
        rank_state["rng_cuda"] = torch.cuda.get_rng_state(d.device)
    atomic_write(partial / f"rank-{d.rank}.pt", lambda tmp: torch.save(rank_state, tmp))
    barrier()
    if d.is_main:
        atomic_write_text(partial / "trainer.json", json.dumps({**trainer_state, "step": step,
                                                                 "world_size": d.world_size}, indent=2))
        if final.exists():
            remove_checkpoint(final)
        partial.rename(final)
        fsync_dir(final.parent)
        for old in list_checkpoints(run_dir)[:-keep]:
            remove_checkpoint(old)
    barrier()
    return final


def save_objective(directory: Path, record: dict | None, weights: dict) -> None:
    """The objective's parts beside the encoder (nothing for an objective without parameters)."""
    if not weights:
        return
    weights = {k: v.contiguous() for k, v in weights.items()}
    atomic_write(directory / OBJECTIVE_FILE, lambda tmp: save_file(weights, str(tmp)))
    atomic_write_text(directory / OBJECTIVE_RECORD, json.dumps(record or {}, indent=2) + "\n")


def load_objective_weights(path: Path) -> dict:
    """The objective's parts saved in checkpoint `path` (empty when it had none)."""
    file = Path(path) / OBJECTIVE_FILE
    return load_file(str(file)) if file.is_file() else {}


def read_objective_record(path: Path) -> dict | None:
    """objective.json of a checkpoint (name and settings), or None for a plain classification checkpoint."""
    file = Path(path) / OBJECTIVE_RECORD
    return json.loads(file.read_text()) if file.is_file() else None


def remove_checkpoint(path: Path) -> None:
    """Rename to .partial first, so a process killed mid-deletion leaves no half-deleted 'complete' checkpoint."""
    doomed = path.with_name(path.name + ".old.partial")  # not the name a checkpoint being written has
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_partial(run_dir: Path) -> None:
    """Leftovers of a checkpoint that was being written when the process died."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for p in root.glob("step-*.partial"):
            shutil.rmtree(p, ignore_errors=True)


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / "trainer.json").read_text())


def find_resumable(run_dir: Path, world_size: int) -> Path | None:
    """The newest complete checkpoint whose files all read back; older ones are tried if the newest is damaged."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = read_trainer_state(path)
            load_file(str(path / WEIGHTS_FILE))
        except (OSError, ValueError, RuntimeError) as e:
            warnings.warn(f"checkpoint {path} is unreadable ({e}); trying an older one")
            continue
        if state.get("world_size", 1) != world_size:
            raise RuntimeError(
                f"{path} was written by {state.get('world_size')} processes, this run has {world_size}: exact "
                "resume needs the same world size (start a new run_dir, with model.init pointing at it, to change)")
        return path
    return None


def load_model_weights(path: Path) -> dict:
    return load_file(str(path / WEIGHTS_FILE))


def restore(path: Path, *, model, optimizer, ema, loader, d: Dist) -> dict:
    """Load optimiser, EMA, loader and RNG state from `path` into a built (and wrapped) run; returns trainer.json."""
    optim_sd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
    if ema is not None:
        ema_file = path / "ema" / WEIGHTS_FILE
        if ema_file.is_file():
            ema.load_full_state_dict(join_state_dicts(load_file(str(ema_file)), load_objective_weights(path / "ema")))
        else:
            warnings.warn(f"{path} has no EMA weights; EMA restarts from the current weights")
    rank_file = path / f"rank-{d.rank}.pt"
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    loader.load_state_dict(to_numpy(rank_state["loader"]))
    torch.set_rng_state(rank_state["rng_cpu"])
    if "rng_cuda" in rank_state and d.device.type == "cuda":
        torch.cuda.set_rng_state(rank_state["rng_cuda"], d.device)
    return read_trainer_state(path)


def to_tensors(state):
    """numpy arrays -> tensors (marked), so torch.load(weights_only=True) reads the state back."""
    if isinstance(state, dict):
        return {k: to_tensors(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_tensors(v) for v in state)
    if isinstance(state, np.ndarray):
        return {"__numpy__": torch.from_numpy(np.ascontiguousarray(state))}
    if isinstance(state, np.generic):
        return state.item()
    return state


def to_numpy(state):
    if isinstance(state, dict):
        if set(state) == {"__numpy__"}:
            return state["__numpy__"].numpy()
        return {k: to_numpy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_numpy(v) for v in state)
    return state
