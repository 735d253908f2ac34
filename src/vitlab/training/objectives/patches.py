"""Per-patch views of an image batch, for the self-supervised targets: pixels, mean colours, cells.

A "patch" is the image region one token sees: P x P pixels for a pure ViT (P = patch size), the stride of
a hybrid's ResNet times P otherwise. Patches are numbered row-major over the grid, as the tokens are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.preprocessing import Preprocessing


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch * patch * C), each patch's pixels row by row, channels last."""
    B, C, H, W = images.shape
    gh, gw = H // patch, W // patch
    x = images.reshape(B, C, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, gh * gw, patch * patch * C)


def unpatchify(patches: torch.Tensor, patch: int, grid_hw: tuple[int, int], channels: int) -> torch.Tensor:
    """The inverse of `patchify`."""
    B = patches.shape[0]
    gh, gw = grid_hw
    x = patches.reshape(B, gh, gw, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, gh * patch, gw * patch)


def to_pixels(images: torch.Tensor, record: Preprocessing) -> torch.Tensor:
    """Model inputs back to pixel values in 0..255 (rounded: the loader normalised uint8 pixels)."""
    return record.denormalise(images).round().clamp(0, 255)


def colour_classes(pixels: torch.Tensor, bits: int) -> torch.Tensor:
    """(B, C, h, w) mean pixel values in 0..255 -> (B, h, w) colour classes: each channel quantised to
    2**bits equal levels (level = floor(value * levels / 256)), the levels read as digits of one number,
    first channel most significant (R * 64 + G * 8 + B for 3 bits of RGB)."""
    levels = 2**bits
    q = torch.div(pixels * levels, 256, rounding_mode="floor").clamp(0, levels - 1).long()
    index = torch.zeros_like(q[:, 0])
    for c in range(q.shape[1]):
        index = index * levels + q[:, c]
    return index


def cell_colour_classes(pixels: torch.Tensor, patch: int, cells: int, bits: int) -> torch.Tensor:
    """(B, C, H, W) pixels in 0..255 -> (B, N, cells * cells): each patch averaged down to cells x cells
    and each cell's mean colour as a class (`colour_classes`); cells = 1 is the patch's mean colour."""
    B, C, H, W = pixels.shape
    means = F.avg_pool2d(pixels, patch // cells)  # (B, C, gh * cells, gw * cells)
    classes = colour_classes(means, bits)  # (B, gh * cells, gw * cells)
    gh, gw = H // patch, W // patch
    classes = classes.reshape(B, gh, cells, gw, cells).permute(0, 1, 3, 2, 4)
    return classes.reshape(B, gh * gw, cells * cells)


def colour_pixels(classes: torch.Tensor, bits: int, channels: int, cells: int, patch: int) -> torch.Tensor:
    """The inverse of `cell_colour_classes` for drawing: (B, N, cells * cells) classes -> (B, N, P * P * C)
    patch pixels, each cell filled with the centre of its colour's levels."""
    levels = 2**bits
    digits = []
    rest = classes
    for _ in range(channels):  # least significant digit first: the last channel
        digits.append(rest % levels)
        rest = torch.div(rest, levels, rounding_mode="floor")
    values = (torch.stack(digits[::-1], dim=-1).float() + 0.5) * (256 / levels)  # (B, N, cells*cells, C)
    B, N = classes.shape[:2]
    size = patch // cells
    values = values.reshape(B, N, cells, 1, cells, 1, channels).expand(-1, -1, -1, size, -1, size, -1)
    return values.reshape(B, N, patch * patch * channels)
