"""Optimisers: Adam, AdamW, SGD with momentum, Adagrad, with the paper's weight-decay split.

Weight decay applies to weight matrices and kernels only: biases, norm scales, the position embeddings and
the class token are left alone (unless `decay_all`). Layer-wise learning-rate decay (as in BEiT / MAE
fine-tuning) scales block i's learning rate by decay ** (depth + 1 - layer(i)).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import OptimConfig


def is_decayed(name: str, param: torch.Tensor, no_decay_names: set[str]) -> bool:
    return param.ndim > 1 and name.split(".")[-1] not in no_decay_names and name not in no_decay_names


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for encoder block i, depth + 1 for the final norm, the head and the
    training objective's parts (names are the model's, or a TrainingModule's: 'model.blocks.0...')."""
    if name.startswith("objective."):
        return depth + 1
    name = name.removeprefix("model.")
    if name.startswith(("patch_embed.", "cls_token", "dist_token", "reg_token", "pos_embed")):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """One group per (decayed?, lr scale); each group carries its `lr_scale` for the schedule."""
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depth = len(getattr(getattr(model, "model", model), "blocks", ()))
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = cfg.decay_all or is_decayed(name, param, no_decay)
        scale = 1.0 if cfg.layer_decay is None else cfg.layer_decay ** (depth + 1 - layer_id(name, depth))
        group = groups.setdefault((decayed, scale), {
            "params": [], "names": [], "lr_scale": scale, "weight_decay": cfg.weight_decay if decayed else 0.0})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, device_type: str = "cpu",
                    sharded: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    for group in groups:
        del group["names"]  # torch would keep them in the state dict; they are for inspection only
    impl = implementation_kwargs(cfg.implementation, device_type, sharded)
    name = cfg.name
    if name == "adam":
        # torch's Adam adds weight decay to the gradient (L2); the official code's is decoupled, i.e. adamw
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **impl)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **impl)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, **impl)
    raise ValueError(f"unknown optimiser {name!r}: adam, adamw, sgd or adagrad")


def make_adamw(model: nn.Module, lr: float = 1e-3, *, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 0.0, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW on `model` with the paper's weight-decay split, fused where the device has the kernel (scripts,
    benchmarks); fused=True/False forces the choice."""
    implementation = {None: "auto", True: "fused", False: "for-loop"}[fused]
    cfg = OptimConfig(name="adamw", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                      implementation=implementation)
    device = next(model.parameters()).device
    return build_optimizer(model, cfg, device_type=device.type)


def fused_optimizer_devices() -> set[str]:
    """Device types on which torch has fused optimiser kernels (one kernel for every parameter)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        return set(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: the kernel exists on CUDA
        return {"cuda"}


def implementation_kwargs(implementation: str, device_type: str, sharded: bool) -> dict:
    """Fused kernels wherever torch has them, CPU included (on a small model on CPU the per-parameter loop of
    torch's default cost ~15% of the step); torch's default for FSDP's sharded DTensors."""
    auto_fused = device_type in fused_optimizer_devices() and not sharded
    if implementation == "fused" or (implementation == "auto" and auto_fused):
        return {"fused": True}
    if implementation == "foreach":
        return {"foreach": True}
    if implementation == "for-loop":
        return {"foreach": False}
    return {}
