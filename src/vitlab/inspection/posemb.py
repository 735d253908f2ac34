"""Position-embedding similarity (the paper's Figure 7, centre).

For each patch position, the cosine similarity of its learned position embedding with those of all positions:
a small map per position, laid out on the patch grid. A trained ViT learns the 2-D structure this way: nearby
positions, and positions in the same row or column, have similar embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .attention import check_vit


def position_similarity(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> np.ndarray:
    """(gh, gw, gh, gw) cosine similarities between the (gh * gw, D) patch position embeddings (row-major)."""
    gh, gw = grid_hw
    e = torch.as_tensor(pos_embed, dtype=torch.float64).reshape(-1, pos_embed.shape[-1])
    if e.shape[0] != gh * gw:
        raise ValueError(f"{e.shape[0]} position embeddings do not fit a {gh}x{gw} patch grid")
    e = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (e @ e.T).reshape(gh, gw, gh, gw).numpy()


def posemb_similarity(model: nn.Module) -> np.ndarray:
    """The patch position embeddings' similarity maps of a ViT ([class] token's embedding left out).

    Works for every position-embedding variant that adds a table at the input (learned 1-D or 2-D, sin-cos);
    a ValueError names the variant for "none" and "relative", which have none."""
    cfg = check_vit(model)
    with torch.no_grad():
        patches = model.patch_position_embeddings().detach().cpu()
    return position_similarity(patches, cfg.grid_size)
