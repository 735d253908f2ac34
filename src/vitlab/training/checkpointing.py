"""Training checkpoints: everything needed to continue the same trajectory, written so a crash never corrupts.

run_dir/checkpoints/step-00001000/
    config.json, model.safetensors   the model in vitlab format (load_pretrained reads it)
    objective.json, objective.safetensors   the objective's own parts (MPP's head, MAE's decoder), if any
    ema/                             the EMA weights of both, in the same layout, when EMA is on
    optimizer.pt                     optimiser state (torch.save; read back with weights_only=True)
    rank-0.pt, rank-1.pt, ...        each rank's RNG and data-loader position
    trainer.json                     step, epoch, best accuracy, time spent
    manifest.json                    size and sha256 of every file above, written last

Nothing is lost, whatever stops the process:
- A checkpoint is written into `step-XXXXXXXX.partial/` (each file atomically), then renamed: a directory
  without the suffix is always complete, and start-up deletes only `.partial` directories.
- Saving a step that already has a checkpoint (a finished run saved again) renames the old one to
  `step-XXXXXXXX.replaced` before the new one takes its name: at every instant one complete copy exists, and
  start-up renames a `.replaced` back when the new copy did not make it.
- Before resuming, every file of a checkpoint is checked against its manifest (older checkpoints without one are
  read whole); a damaged checkpoint is named in a warning and the newest whole one is used instead.
- A write that fails (disk full) raises `CheckpointWriteError` naming the file; earlier checkpoints are intact.
- `RunLock`: one trainer per run directory (an exclusive `flock` on run_dir/.lock, which holds the owner's pid).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
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

from ..checkpoints import CheckpointError, save_pretrained
from ..checkpoints.vitlab_format import WEIGHTS_FILE
from ..data.preprocessing import Preprocessing
from ..errors import VitlabError
from ..fileio import atomic_write, atomic_write_text, fsync_dir
from ..runtime import Dist, barrier
from .objectives import join_state_dicts, split_state_dict
from .objectives.base import RECORD_FILE as OBJECTIVE_RECORD
from .objectives.base import WEIGHTS_FILE as OBJECTIVE_FILE

STEP_DIR = re.compile(r"^step-(\d{8})$")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
MANIFEST = "manifest.json"
REPLACED = ".replaced"  # a complete checkpoint moved aside while a new copy of the same step takes its name


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the earlier checkpoints are intact."""


class RunDirLocked(VitlabError, RuntimeError):
    """Another trainer holds the run directory."""


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint that does not read back whole; an older one is used instead."""


@dataclass
class WeightsSnapshot:
    """Just enough of a model for save_pretrained: its config and full (unsharded, CPU) weights."""

    config: object
    weights: dict
    label_names: list | None = None
    preprocessing: Preprocessing | None = None

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
    with reporting_write_errors(partial, d):
        if d.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        barrier()
        if d.is_main:
            save_pretrained(WeightsSnapshot(model_config, model_sd, label_names, preprocessing), partial,
                            metrics={"step": step, **trainer_state})  # the model card shows the run's metrics
            save_objective(partial, objective_record, objective_sd)
            if ema_sd is not None:
                save_pretrained(WeightsSnapshot(model_config, ema_sd, label_names, preprocessing), partial / "ema")
                save_objective(partial / "ema", objective_record, ema_objective_sd)
            atomic_write(partial / "optimizer.pt", lambda tmp: torch_save(optim_sd, tmp))
        rank_state = {"rng_cpu": torch.get_rng_state(), "loader": to_tensors(loader.state_dict())}
        if d.device.type == "cuda":
            rank_state["rng_cuda"] = torch.cuda.get_rng_state(d.device)
        atomic_write(partial / f"rank-{d.rank}.pt", lambda tmp: torch_save(rank_state, tmp))
        barrier()
        if d.is_main:
            atomic_write_text(partial / "trainer.json", json.dumps({**trainer_state, "step": step,
                                                                     "world_size": d.world_size}, indent=2))
            write_manifest(partial)
            put_in_place(partial, final)
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


def torch_save(obj, path: Path) -> None:
    """torch.save, whose failed writes (a full disk) surface as a RuntimeError from its zip writer: an OSError."""
    try:
        torch.save(obj, path)
    except RuntimeError as e:
        full = os.statvfs(path.parent).f_bavail == 0
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      os.strerror(errno.ENOSPC) if full else f"torch.save failed: {str(e).splitlines()[0]}") from e


class reporting_write_errors:
    """Turn an OSError while writing a checkpoint into CheckpointWriteError (one line naming the file and the
    reason) and remove the unfinished copy; the complete checkpoints are left as they are."""

    def __init__(self, partial: Path, d: Dist):
        self.partial, self.d = partial, d

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or not isinstance(error, OSError) or isinstance(error, CheckpointWriteError):
            return False
        if self.d.is_main:
            shutil.rmtree(self.partial, ignore_errors=True)
        where = error.filename or self.partial
        reason = error.strerror or os.strerror(error.errno) if error.errno else str(error)
        raise CheckpointWriteError(error.errno or errno.EIO, f"cannot write the checkpoint ({reason}); the earlier "
                                   "checkpoints are intact", str(where)) from error


def put_in_place(partial: Path, final: Path) -> None:
    """Rename the finished `partial` to `final`; an existing `final` (the same step saved again) is moved aside
    first and deleted only once the new copy has its name, so a complete copy is on disk at every instant."""
    aside = final.with_name(final.name + REPLACED)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
        fsync_dir(final.parent)
    partial.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def remove_checkpoint(path: Path) -> None:
    """Rename to .partial first, so a process killed mid-deletion leaves no half-deleted 'complete' checkpoint."""
    doomed = path.with_name(path.name + ".old.partial")  # not the name a checkpoint being written has
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def recover(run_dir: Path) -> None:
    """Tidy up after a process that died while saving: unfinished `.partial` copies go; a complete checkpoint
    moved aside (`.replaced`) goes back to its name when the new copy did not get there, else it goes too."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return
    for aside in root.glob(f"step-*{REPLACED}"):
        final = aside.with_name(aside.name.removesuffix(REPLACED))
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.rename(final)
            fsync_dir(root)
    for p in root.glob("step-*.partial"):
        shutil.rmtree(p, ignore_errors=True)


# ---- verifying before resuming ------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def write_manifest(path: Path) -> None:
    """Size and sha256 of every file of the checkpoint, written last: resume checks them before trusting it."""
    files = {p.relative_to(path).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in checkpoint_files(path)}
    atomic_write_text(path / MANIFEST, json.dumps({"files": files}, indent=1))


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted (naming the file), or None when every file reads back."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return damage_without_manifest(path)
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest} is unreadable ({e})"
    for name, expected in files.items():
        file = path / name
        try:
            size = file.stat().st_size
        except OSError:
            return f"{file} is missing"
        if size != expected["size"]:
            return f"{file} has {size} bytes, the manifest says {expected['size']} (truncated?)"
        if file_digest(file) != expected["sha256"]:
            return f"{file} does not match its sha256 in the manifest (damaged)"
    return None


def damage_without_manifest(path: Path) -> str | None:
    """Checkpoints written before manifests: read every file whole."""
    readers = {".safetensors": lambda f: load_file(str(f)), ".json": lambda f: json.loads(f.read_text()),
               ".pt": lambda f: torch.load(f, map_location="cpu", weights_only=True)}
    for file in checkpoint_files(path):
        read = readers.get(file.suffix)
        if read is None:
            continue
        try:
            read(file)
        except Exception as e:  # noqa: BLE001 - any failure to read back means the file is damaged
            return f"{file} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / "trainer.json").read_text())


def find_resumable(run_dir: Path, world_size: int) -> Path | None:
    """The newest checkpoint whose every file reads back whole; a damaged one is named in a warning and an older
    one tried. Refuses (rather than starting again from step 0) when checkpoints exist but none is whole."""
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        why = damage(path)
        if why is not None:
            damaged.append(why)
            warnings.warn(f"checkpoint {path.name} is damaged: {why}; falling back to an older checkpoint",
                          DamagedCheckpointWarning, stacklevel=2)
            continue
        state = read_trainer_state(path)
        if state.get("world_size", 1) != world_size:
            raise CheckpointError(
                f"{path} was written by {state.get('world_size')} processes, this run has {world_size}: exact "
                "resume needs the same world size (start a new run_dir, with model.init pointing at it, to change)")
        return path
    if damaged:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir(run_dir)} reads back whole ({damaged[0]}); move "
                              "the damaged ones away to start the run again from step 0")
    return None


def load_plain(file: Path):
    """A torch.save file of tensors and plain containers; one that needs unpickling other objects is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{file}: holds objects beyond tensors and plain containers, which vitlab does not "
                              "unpickle (weights_only); it was not written by vitlab: move the checkpoint away") from None


def optimizer_kind(state_dict: dict) -> str:
    """Which optimiser wrote a state dict, from the per-parameter state it keeps."""
    keys = {k for state in state_dict.get("state", {}).values() if isinstance(state, dict) for k in state}
    for kind, marks in (("Adam/AdamW", {"exp_avg"}), ("SGD", {"momentum_buffer"}), ("Adagrad", {"sum"})):
        if keys & marks:
            return kind
    return "another optimiser's" if keys else "empty"


def load_model_weights(path: Path) -> dict:
    return load_file(str(path / WEIGHTS_FILE))


def restore(path: Path, *, model, optimizer, ema, loader, d: Dist) -> dict:
    """Load optimiser, EMA, loader and RNG state from `path` into a built (and wrapped) run; returns trainer.json."""
    optim_sd = load_plain(path / "optimizer.pt")
    try:
        set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
    except (KeyError, ValueError, RuntimeError) as e:
        saved = optimizer_kind(optim_sd)
        raise CheckpointError(
            f"{path / 'optimizer.pt'} holds {saved} state, which this run's {type(optimizer).__name__} cannot take "
            f"({type(e).__name__}: {e}); resume with the optim settings the run was started with, or start a new "
            "run_dir (model.init = the old run_dir starts from its weights)") from None
    if ema is not None:
        ema_file = path / "ema" / WEIGHTS_FILE
        if ema_file.is_file():
            ema.load_full_state_dict(join_state_dicts(load_file(str(ema_file)), load_objective_weights(path / "ema")))
        else:
            warnings.warn(f"{path} has no EMA weights; EMA restarts from the current weights")
    rank_file = path / f"rank-{d.rank}.pt"
    rank_state = load_plain(rank_file)
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


# ---- one trainer per run directory ---------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run directory: `fcntl.flock` on run_dir/.lock, which holds the owner's pid.

    The kernel releases a flock when its process dies (kill -9 included), so a lock file left behind by a dead
    trainer is simply taken over. flock is per open file: a second RunLock in the same process conflicts too.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a symbolic link: the pid written below would overwrite whatever it points at
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise VitlabError(f"{self.path} is a symbolic link; a run's lock file must be a plain file: delete "
                               "the link") from None
        file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip() or "unknown"
            file.close()
            raise RunDirLocked(f"{self.path.parent} is in use by another trainer (pid {owner}); wait for it to "
                               "finish or stop it, or choose another run_dir") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
