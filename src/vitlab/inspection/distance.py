"""Mean attention distance (the paper's Figure 7, right; Appendix D.7).

For one head and one query patch: the distance in input pixels to every key patch, weighted by the attention
weights, summed. Averaged over the query patches of an image and then over images, it is the "receptive field
size" of the head. Only patch-to-patch attention has a distance: the weight a patch gives the [class] token is
left out and the rest renormalised, so uniform attention over the patches gives the grid's mean pairwise distance
whether or not the model has a [class] token.

Patches are placed at their centres in input pixels: patch (r, c) at ((r + 1/2) s, (c + 1/2) s) with s the
stride, the patch size for a plain ViT and patch size x the ResNet's total stride for the hybrid, whose tokens
are the cells of the ResNet feature map. Only differences of positions enter, so any constant offset of the
feature map's receptive fields cancels.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .attention import attention_weights, check_vit


def patch_distances(grid_hw: tuple[int, int], stride: float) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between the centres of the N = gh * gw patches (row-major)."""
    gh, gw = grid_hw
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1) * stride
    return torch.cdist(centres, centres)


def mean_attention_distance(attentions: Sequence[torch.Tensor], grid_hw: tuple[int, int], stride: float,
                            num_prefix_tokens: int) -> np.ndarray:
    """(B, layers, heads): each head's attention-weighted query-key distance in pixels, mean over queries."""
    distances = patch_distances(grid_hw, stride)
    per_layer = []
    for a in attentions:
        a = torch.as_tensor(a, dtype=torch.float64)[..., num_prefix_tokens:, num_prefix_tokens:]
        if a.shape[-1] != distances.shape[0]:
            raise ValueError(f"attention over {a.shape[-1]} patches does not fit a {grid_hw[0]}x{grid_hw[1]} grid")
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        per_layer.append((a * distances).sum(dim=-1).mean(dim=-1))  # (B, heads)
    return torch.stack(per_layer, dim=1).numpy()


def attention_distance(model: nn.Module, batches: Iterable[torch.Tensor], *, total: int | None = None,
                       progress: bool = True, precision: str = "fp32") -> tuple[np.ndarray, int]:
    """Stream normalised input batches through the model (autocast to `precision`): ((layers, heads) mean
    distance in pixels, images seen).

    Only the running sum is kept, so any number of images fits in memory.
    """
    cfg = check_vit(model)
    total_distance, count = 0.0, 0
    with tqdm(total=total, desc="attention distance", unit="img", disable=None if progress else True) as bar:
        for x in batches:
            _, attentions = attention_weights(model, x, precision)
            d = mean_attention_distance(attentions, cfg.grid_size, cfg.stride, model.num_prefix_tokens)
            total_distance = total_distance + d.sum(axis=0)
            count += d.shape[0]
            bar.update(d.shape[0])
    if count == 0:
        raise ValueError("mean attention distance needs at least one image")
    return total_distance / count, count


def uniform_attention_distance(grid_hw: tuple[int, int], stride: float) -> float:
    """The mean attention distance of a head attending uniformly to every patch: the reference for "global"."""
    return float(patch_distances(grid_hw, stride).mean())
