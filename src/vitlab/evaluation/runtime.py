"""Where evaluation runs: device, mixed precision, torchrun process group, and the checkpoint's own settings."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def init_distributed() -> tuple[int, int]:
    """(rank, world_size); joins the torchrun process group when launched by torchrun with more than one process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, else this process's GPU when there is one, else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def parse_amp(name: str | None, device: torch.device) -> torch.dtype | None:
    """'bf16' / 'fp16' / 'none'; 'auto' (or None) picks bf16 on a GPU that has it and full precision elsewhere."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if name not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of auto, {', '.join(AMP_DTYPES)}; got {name!r}")
    return AMP_DTYPES[name]


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place on the device the backend needs); a no-op in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = tensor.to(on)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def model_image_size(model: nn.Module) -> tuple[int, int]:
    size = model.config.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def model_preprocessing(model: nn.Module) -> dict:
    """How the checkpoint expects pixels normalised; the paper's x / 127.5 - 1 when it does not say."""
    return getattr(model, "preprocessing", None) or {"normalisation": "minus_one_one"}
