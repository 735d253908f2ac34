"""Where a command runs: the device, the numeric precision, and the torchrun process group.

Every command (train, eval, fewshot, vtab, predict, inspect, bench) goes through this one module, so the
same words mean the same thing everywhere:

    d = setup("auto")                         # joins torchrun's process group when there are several ranks
    precision = resolve_precision("auto", d.device)   # "fp32" | "bf16" | "fp16"
    with autocast(d.device, precision):       # matmuls and convolutions in bf16/fp16, fp32 master weights
        logits = model(x)
    counts = all_reduce_sum(counts)           # summed over ranks (unchanged in one process)
    teardown()
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import VitlabError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = (*PRECISIONS, "auto")
# Earlier spellings still read: `--amp none` meant full precision.
PRECISION_ALIASES = {"none": "fp32"}


class RuntimeSettingError(VitlabError, ValueError):
    """A device or precision that vitlab does not know; the message says what it accepts."""


# ---- precision -----------------------------------------------------------------------------------------
def check_precision(value) -> str:
    """The canonical name of a precision: 'fp32' | 'bf16' | 'fp16', or 'auto' (see resolve_precision).

    Every command (train's config, eval, fewshot, vtab, predict, bench) validates through here, so every
    command accepts the same values and refuses any other with the same message.
    """
    name = PRECISION_ALIASES.get(value, value) if isinstance(value, str) else value
    if name not in CHOICES:
        raise RuntimeSettingError(f"unknown precision {value!r}: expected one of {', '.join(CHOICES)}")
    return name


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes in bf16 natively: a GPU with bf16, or a CPU with AVX-512 BF16 or AMX.

    Elsewhere bf16 is emulated: on an AVX2 CPU a small ViT's training step is ~10x slower in bf16 than in fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(value, device: torch.device | str) -> str:
    """The precision to run in: 'auto' (or None) is bf16 where `device` has it natively and fp32 elsewhere."""
    name = check_precision("auto" if value is None else value)
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


def precision_dtype(precision: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> the torch dtype ('auto' must be resolved first, against a device)."""
    name = check_precision(precision)
    if name == "auto":
        raise RuntimeSettingError("precision 'auto' depends on the device: resolve_precision(value, device) first")
    return PRECISIONS[name]


def autocast(device: torch.device | str, precision: str = "fp32"):
    """Mixed precision on `device`: matmuls and convolutions in `precision`, everything else as it was.

    'fp32' gives a context that changes nothing, so callers need no branch of their own.
    """
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# ---- torchrun's environment ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """What torchrun tells this process (RANK, WORLD_SIZE, LOCAL_RANK); a plain run is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> Launch:
    """The one reader of torchrun's variables (read afresh: a test or a parent may set them)."""
    env = os.environ
    return Launch(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


# ---- device --------------------------------------------------------------------------------------------
def pick_device(name: str | None = "auto") -> torch.device:
    """'auto' (or None): this process's GPU when there is one, else the CPU; 'cuda' is this process's GPU."""
    local_rank = launch_env().local_rank
    if name in (None, "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise RuntimeSettingError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeSettingError(f"device {name!r} asked for, but CUDA is not available here "
                                      f"(use --device cpu or auto)")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise RuntimeSettingError(f"device {name!r}: there is no GPU {index} here "
                                      f"({torch.cuda.device_count()} visible)")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise RuntimeSettingError(f"unsupported device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


# ---- process group -------------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in the run: its rank among world_size processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = "auto", backend: str = "auto") -> Dist:
    """Read torchrun's environment, pick the device, and join the process group when there are several ranks."""
    rank, world_size, local_rank = dataclasses.astuple(launch_env())
    chosen = pick_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                device_id=chosen if chosen.type == "cuda" else None)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Dist(rank, world_size, local_rank, chosen)


# The FSDP2 device meshes this process built. DTensor's module-level caches (sharding propagation, mesh
# topology) keep every mesh they have seen alive, and a mesh holds its process groups: without releasing them
# here the gloo/NCCL backend, its worker threads and its sockets outlive destroy_process_group and the Python
# interpreter, and die in C++ static destruction at exit(), where they abort the process now and then.
_meshes: list = []


def register_mesh(mesh) -> None:
    """Remember a device mesh so that teardown can release its process groups."""
    _meshes.append(mesh)


def teardown() -> None:
    """Leave the process group (every rank together) and release what holds it."""
    if dist.is_initialized():
        # every rank reaches here before any tears down: gloo aborts a process whose peer left mid-operation
        dist.barrier()
        dist.destroy_process_group()
    for mesh in _meshes:
        mesh._pg_registry.clear()  # the mesh's only references to its process groups
    _meshes.clear()
    gc.collect()  # the model (DDP/FSDP hold the group too) is in reference cycles: free the group now


# ---- reductions ----------------------------------------------------------------------------------------
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all ranks, on the tensor's own device; the tensor itself in one process."""
    if not _distributed():
        return tensor
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = tensor.to(on, copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def all_reduce_floats(values: list[float]) -> list[float]:
    """A few Python numbers summed over ranks in float64 (one small collective)."""
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list in one process)."""
    if not _distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if _distributed():
        dist.barrier()
