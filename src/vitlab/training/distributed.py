"""Training at scale under torchrun: the model wrapped in DDP or FSDP2 (the process group is vitlab.runtime's).

The same command runs on one process (no torchrun: world size 1, nothing initialised) or many:
`torchrun --nproc-per-node 8 -m vitlab train CONFIG` (add --nnodes/--rdzv-endpoint for several nodes).
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import Dist, precision_dtype, register_mesh
from .config import DistributedConfig


def wrap(model: nn.Module, cfg: DistributedConfig, d: Dist, *, precision: str = "fp32") -> nn.Module:
    """DDP (every rank holds the whole model) or FSDP2 (parameters sharded per encoder block).

    `model` is an objectives.TrainingModule: under FSDP each of its parts (the ViT; the objective's, when it
    has parameters) is sharded on its own, block by block, and the ViT's `forward_features` goes through
    FSDP like its `forward` (objectives call it).
    """
    if not d.enabled:
        return model
    if cfg.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(d.device.type, (d.world_size,))
        register_mesh(mesh)
        mp = (MixedPrecisionPolicy(param_dtype=precision_dtype(precision), reduce_dtype=torch.float32)
              if precision != "fp32" else None)
        kwargs = {"mesh": mesh, **({"mp_policy": mp} if mp is not None else {})}
        from torch.distributed.fsdp import register_fsdp_forward_method

        for part in model.children():
            if not any(p.requires_grad for p in part.parameters()):
                continue
            for name, blocks in part.named_modules():
                if name.split(".")[-1].endswith("blocks") and isinstance(blocks, nn.ModuleList):
                    for block in blocks:
                        fully_shard(block, **kwargs)
            fully_shard(part, **kwargs)
            if hasattr(part, "forward_features"):
                register_fsdp_forward_method(part, "forward_features")
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP and/or torch.compile."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
