"""Resampling learned position embeddings to another patch grid (fine-tuning at a new resolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("official", "bilinear", "bicubic")


def resample_grid(grid: torch.Tensor, new_hw: tuple[int, int], method: str = "official") -> torch.Tensor:
    """Resample position embeddings laid out as (gh, gw, D) to (new_h, new_w, D).

    "official" is what the ViT authors' code does, `scipy.ndimage.zoom(order=1)`: bilinear with the corner
    samples kept on the corners (align_corners=True). "bilinear" and "bicubic" are timm / Hugging Face's
    half-pixel-centred resizes.
    """
    if method not in METHODS:
        raise ValueError(f"unknown position-embedding resampling method {method!r}; expected one of {METHODS}")
    if tuple(grid.shape[:2]) == tuple(new_hw):
        return grid
    x = grid.permute(2, 0, 1).unsqueeze(0).float()
    if method == "official":
        x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=True)
    else:
        x = F.interpolate(x, size=new_hw, mode=method, align_corners=False)
    return x.squeeze(0).permute(1, 2, 0).to(grid.dtype)


def resample_posemb(
    posemb: torch.Tensor,
    old_hw: tuple[int, int],
    new_hw: tuple[int, int],
    num_prefix_tokens: int,
    method: str = "official",
) -> torch.Tensor:
    """Resample a (1, prefix + gh*gw, D) position embedding; the [class] row is kept apart, unchanged."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    if grid.shape[1] != old_hw[0] * old_hw[1]:
        raise ValueError(
            f"position embedding has {grid.shape[1]} patch rows, which is not a {old_hw[0]}x{old_hw[1]} grid"
        )
    grid = resample_grid(grid[0].reshape(old_hw[0], old_hw[1], -1), new_hw, method)
    return torch.cat([prefix, grid.reshape(1, new_hw[0] * new_hw[1], -1)], dim=1)
