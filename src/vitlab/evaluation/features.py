"""The frozen image representation of a model: the pre-logits output, or the pooled feature where there is none."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from .metrics import unpack
from ..runtime import all_gather_objects, autocast, rank_and_world


def representation(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


@torch.no_grad()  # not inference_mode: the features go on to train a linear probe
def extract_features(model: nn.Module, batches: Iterable, *, device="cpu", precision: str = "fp32", progress: bool = True,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features float32 (N, D), labels (N,), data set indices (N,)) on the CPU, sorted by index.

    Under torchrun each process extracts its own shard and all of them receive every shard's features.
    """
    device = torch.device(device)
    model = model.eval().to(device)
    feats, labels, indices = [], [], []
    rank, _ = rank_and_world()
    for batch in tqdm(batches, desc=desc, unit="batch", disable=None if progress and rank == 0 else True):
        images, batch_labels, batch_indices = unpack(batch)
        with autocast(device, precision):
            out = representation(model, images.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(batch_labels.cpu())
        if batch_indices is None:  # plain (images, labels) batches: number them in arrival order
            start = sum(len(i) for i in indices)
            batch_indices = torch.arange(start, start + len(batch_labels))
        indices.append(batch_indices.cpu())
    width = model.num_features if hasattr(model, "num_features") else 0
    local = (torch.cat(feats) if feats else torch.zeros(0, width), torch.cat(labels) if labels else
             torch.zeros(0, dtype=torch.long), torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long))
    shards = all_gather_objects(local)
    features = torch.cat([s[0] for s in shards])
    order = torch.cat([s[2] for s in shards]).argsort()
    return features[order], torch.cat([s[1] for s in shards])[order], torch.cat([s[2] for s in shards])[order]
