"""Attention rollout (Abnar and Zuidema, 2020), the maps of the paper's Figures 6 and 14.

Each layer's attention is averaged over heads, the identity is added for the residual connection and the rows
are renormalised; multiplying these through the layers gives how much each output token draws on each input
token. The [class] token's row, over the patches, is the map; a model without a [class] token (gap) uses the
mean of all rows, since its representation is the mean of all tokens.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def rollout_matrix(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, T, T): the product, last layer first, of (mean-over-heads attention + I) with rows renormalised."""
    joint = None
    for a in attentions:
        a = torch.as_tensor(a, dtype=torch.float64)
        a = a.mean(dim=1) + torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    if joint is None:
        raise ValueError("attention rollout needs the attention of at least one layer")
    return joint


def attention_rollout(attentions: Sequence[torch.Tensor], num_prefix_tokens: int,
                      grid_hw: tuple[int, int], class_token: bool | None = None) -> np.ndarray:
    """(B, gh, gw): the rolled-out attention of the representation over the patch grid.

    The representation's row is the [class] token's, or without one (GAP / MAP, perhaps with register tokens)
    the mean of the patch tokens' rows. `class_token` None means: any prefix token is a [class] token."""
    joint = rollout_matrix(attentions)
    return patch_maps(representation_rows(joint, num_prefix_tokens, class_token), num_prefix_tokens, grid_hw)


def class_attention(last_attention: torch.Tensor, num_prefix_tokens: int,
                    grid_hw: tuple[int, int], class_token: bool | None = None) -> np.ndarray:
    """(B, heads, gh, gw): one layer's raw attention of the [class] token (gap: mean over queries) per head."""
    a = torch.as_tensor(last_attention, dtype=torch.float64)
    return patch_maps(representation_rows(a, num_prefix_tokens, class_token), num_prefix_tokens, grid_hw)


def representation_rows(a: torch.Tensor, num_prefix_tokens: int, class_token: bool | None) -> torch.Tensor:
    """(..., T) from (..., T, T): the [class] token's row, or the mean of the patch tokens' rows."""
    if class_token is None:
        class_token = num_prefix_tokens > 0
    return a[..., 0, :] if class_token else a[..., num_prefix_tokens:, :].mean(dim=-2)


def patch_maps(rows: torch.Tensor, num_prefix_tokens: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """Rows over all tokens (..., T) -> maps over the patch grid (..., gh, gw), prefix tokens dropped."""
    gh, gw = grid_hw
    patches = rows[..., num_prefix_tokens:]
    if patches.shape[-1] != gh * gw:
        raise ValueError(f"attention over {rows.shape[-1]} tokens does not fit a {gh}x{gw} patch grid "
                         f"with {num_prefix_tokens} prefix token(s)")
    return patches.reshape(*patches.shape[:-1], gh, gw).numpy()
