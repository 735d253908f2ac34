"""Will a training run fit? A lower bound on one process's memory, against the machine's, before anything is
allocated."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime import launch_env
from .errors import ConfigError

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
    kept_patches = max(1, round(tokens * (1 - getattr(planned, "patch_dropout", 0.0))))
    tokens = kept_patches + getattr(planned, "num_prefix_tokens", 0)
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
    settings = "".join(f", model.overrides.{k} = {v!r}" for k, v in cfg.model.overrides.items())
    raise ConfigError(
        f"model {cfg.model.name}{settings} at data.image_size = {cfg.data.image_size} needs at least "
        f"{total / gib:,.1f} GiB to train ({need['weights'] / gib:,.1f} GiB of weights, gradients and optimiser state; "
        f"{need['activations'] / gib:,.1f} GiB of activations for a micro-batch of {need['micro_batch']} images of "
        f"{need['tokens']:,} tokens) but this machine has {available[0] / gib:,.1f} GiB of {available[1]}: lower "
        "data.image_size or data.batch_size, raise train.accumulation_steps, or set model.grad_checkpointing = true")
