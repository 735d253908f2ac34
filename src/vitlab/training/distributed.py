"""Scale-out under torchrun: process group, DDP or FSDP2 wrapping, rank-aware helpers.

The same command runs on one process (no torchrun: world size 1, nothing initialised) or many:
`torchrun --nproc-per-node 8 -m vitlab train CONFIG` (add --nnodes/--rdzv-endpoint for several nodes).
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import DistributedConfig


@dataclass
class Dist:
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


def setup(cfg: DistributedConfig) -> Dist:
    """Read torchrun's environment, pick the device, and join the process group when there are several."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                device_id=device if use_cuda else None)
    return Dist(rank, world_size, local_rank, device)


# The FSDP2 device meshes this process built. DTensor's module-level caches (sharding propagation, mesh
# topology) keep every mesh they have seen alive, and a mesh holds its process groups: without releasing them
# here the gloo/NCCL backend, its worker threads and its sockets outlive destroy_process_group and the Python
# interpreter, and die in C++ static destruction at exit(), where they abort the process now and then.
_meshes: list = []


def teardown() -> None:
    if dist.is_initialized():
        # every rank reaches here before any tears down: gloo aborts a process whose peer left mid-operation
        dist.barrier()
        dist.destroy_process_group()
    for mesh in _meshes:
        mesh._pg_registry.clear()  # the mesh's only references to its process groups
    _meshes.clear()
    gc.collect()  # the model (DDP/FSDP hold the group too) is in reference cycles: free the group now


def wrap(model: nn.Module, cfg: DistributedConfig, d: Dist, *, bf16: bool = False) -> nn.Module:
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
        _meshes.append(mesh)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
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


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Sum a few floats over ranks (one small collective)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
