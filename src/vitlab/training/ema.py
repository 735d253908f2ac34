"""Exponential moving average (Polyak averaging) of the weights: ema = decay * ema + (1 - decay) * w."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from the ranks when it is an FSDP shard (a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: full_tensor(s).detach().cpu() for n, s in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load_full_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise ValueError(f"EMA weights lack {missing[:5]}")
        for name, shadow in zip(self.names, self.shadow):
            full = weights[name].to(device=shadow.device, dtype=shadow.dtype)
            if hasattr(shadow, "device_mesh"):  # an FSDP shard: keep only this rank's part
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, shadow.device_mesh, shadow.placements)
            shadow.copy_(full)

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self):
        """Temporarily put the averaged weights into the model (for evaluation)."""
        backup = [p.detach().clone() for p in self.params]
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)
        try:
            yield
        finally:
            for p, b in zip(self.params, backup):
                p.copy_(b)
