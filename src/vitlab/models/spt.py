"""Shifted patch tokenization (SPT; Lee, Lee & Song, "Vision Transformer for Small-Size Datasets", 2021).

The paper's patch embedding lets a token see only its own P x P pixels. SPT widens each token's view: the image
and four copies of it shifted diagonally by half a patch (zero where a copy moved away from the border) are
stacked on the channels (5 C), cut into P x P patches, flattened, layer-normed and projected to width D. A token
so reads every pixel within P/2 of its patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))  # (down, right) directions of the four shifted copies
VIEWS = 1 + len(DIAGONALS)  # the image and its shifted copies


def shifted_views(x: torch.Tensor, shift: int) -> torch.Tensor:
    """(B, 5C, H, W): x, then x moved by `shift` pixels along each diagonal (up-left, up-right, down-left,
    down-right), zero-filled where the copy moved away from the border."""
    H, W = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    views = [padded[..., (1 - dy) * shift:(1 - dy) * shift + H, (1 - dx) * shift:(1 - dx) * shift + W]
             for dy, dx in DIAGONALS]
    return torch.cat([x] + views, dim=1)


class ShiftedPatchTokenization(nn.Module):
    """x -> [x, four diagonal shifts] -> P x P patches, flattened (channel, row, column) -> LayerNorm -> Linear."""

    def __init__(self, cfg):  # a ViTConfig
        super().__init__()
        self.patch_size, self.shift = cfg.patch_size, cfg.patch_size // 2
        features = VIEWS * cfg.in_chans * cfg.patch_size**2
        self.norm = nn.LayerNorm(features, eps=cfg.layer_norm_eps)
        self.proj = nn.Linear(features, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = shifted_views(x, self.shift)
        B, C, H, W = views.shape
        P = self.patch_size
        patches = views.view(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * P * P)
        return self.proj(self.norm(patches))  # (B, gh*gw, D), row-major over the grid

    def image_filters(self) -> torch.Tensor:
        """(D, C, P + 2s, P + 2s): each token's linear map from the pixels it reads (the LayerNorm's scales
        folded in, its per-token centring and scaling left out), every shifted copy put back where its pixels
        lie in the image."""
        P, s = self.patch_size, self.shift
        weight = (self.proj.weight * self.norm.weight).detach()
        D = weight.shape[0]
        copies = weight.view(D, VIEWS, -1, P, P)
        filters = weight.new_zeros(D, copies.shape[2], P + 2 * s, P + 2 * s)
        for i, (dy, dx) in enumerate(((0, 0),) + DIAGONALS):  # a copy moved by (dy, dx) s reads x at -(dy, dx) s
            top, left = s - dy * s, s - dx * s
            filters[:, :, top:top + P, left:left + P] += copies[:, i]
        return filters
