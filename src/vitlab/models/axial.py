"""Axial attention (the paper's Appendix D.6): AxialViT replaces each encoder block by two, one attending
along rows and one along columns, each followed by its MLP.

A row block runs ordinary multi-head self-attention on each row of the patch grid as its own sequence (a
column block, on each column). The paper does not say what happens to the [class] token; our choice: every
prefix token ([class], distillation, registers) is put at the front of every row (column) sequence, so
each patch also attends to it and it attends to every patch, one line at a time; its new value is the mean
of its outputs over the lines. On a grid of one row, a row block is exactly a full ViT block.
"""

from __future__ import annotations

import torch

AXES = ("row", "column")


def line_index(grid_hw: tuple[int, int], axis: str, num_prefix_tokens: int, device=None) -> torch.Tensor:
    """(lines, length): the sequence position of each patch, line by line (rows, or columns)."""
    gh, gw = grid_hw
    index = torch.arange(gh * gw, device=device).view(gh, gw) + num_prefix_tokens
    return index if axis == "row" else index.t()


def to_lines(x: torch.Tensor, grid_hw: tuple[int, int], axis: str, num_prefix_tokens: int) -> torch.Tensor:
    """(B, P + gh*gw, D) -> (B * lines, P + length, D): the prefix tokens, then one row (column) of patches."""
    B, _, D = x.shape
    gh, gw = grid_hw
    grid = x[:, num_prefix_tokens:].view(B, gh, gw, D)
    if axis == "column":
        grid = grid.transpose(1, 2)
    lines, length = grid.shape[1], grid.shape[2]
    grid = grid.reshape(B * lines, length, D)
    if not num_prefix_tokens:
        return grid
    prefix = x[:, None, :num_prefix_tokens].expand(B, lines, num_prefix_tokens, D)
    return torch.cat([prefix.reshape(B * lines, num_prefix_tokens, D), grid], dim=1)


def from_lines(y: torch.Tensor, batch: int, grid_hw: tuple[int, int], axis: str,
               num_prefix_tokens: int) -> torch.Tensor:
    """Inverse of `to_lines`; each prefix token becomes the mean of its outputs over the lines."""
    gh, gw = grid_hw
    D = y.shape[-1]
    lines = gh if axis == "row" else gw
    y = y.view(batch, lines, -1, D)
    grid = y[:, :, num_prefix_tokens:]
    if axis == "column":
        grid = grid.transpose(1, 2)
    grid = grid.reshape(batch, gh * gw, D)
    if not num_prefix_tokens:
        return grid
    return torch.cat([y[:, :, :num_prefix_tokens].mean(dim=1), grid], dim=1)


def full_attention_weights(weights: torch.Tensor, batch: int, grid_hw: tuple[int, int], axis: str,
                           num_prefix_tokens: int) -> torch.Tensor:
    """The (B, heads, T, T) matrix A with A @ V equal to the axial layer's output (for inspection).

    Patches attend within their line (and to the prefix tokens); a prefix token's row is the mean over lines.
    """
    P = num_prefix_tokens
    G = line_index(grid_hw, axis, P, weights.device)  # (lines, length)
    lines = G.shape[0]
    T = P + G.numel()
    w = weights.view(batch, lines, *weights.shape[1:])  # (B, lines, heads, P + n, P + n)
    full = weights.new_zeros(batch, weights.shape[1], T, T)
    full[:, :, G[:, :, None], G[:, None, :]] = w[:, :, :, P:, P:].permute(0, 2, 1, 3, 4)
    if P:
        full[:, :, G, :P] = w[:, :, :, P:, :P].permute(0, 2, 1, 3, 4)
        full[:, :, :P, :P] = w[:, :, :, :P, :P].mean(dim=1)
        full[:, :, :P, G] = w[:, :, :, :P, P:].permute(0, 2, 3, 1, 4) / lines
    return full
