"""The attention pictures the API returns: the rollout over the user's own image, and each head's map."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from ..inspection.figures import colorize, enlarge, overlay, to_rgb, unit_range, upsample
from ..inspection.images import resize

DISPLAY_SIDE = 384  # the overlay's long side at most, in pixels (a larger upload is scaled down to it)
MIN_DISPLAY_SIDE = 224  # a smaller one (a 28 px Fashion-MNIST image) is enlarged, pixels kept square
HEAD_SIDE = 96  # each head's map is enlarged (nearest) to at least this many pixels


def display_copy(image: torch.Tensor, side: int = DISPLAY_SIDE) -> torch.Tensor:
    """uint8 (C, H, W), aspect kept: scaled down so its long side is at most `side`, or enlarged by a whole
    factor (nearest) so it is at least MIN_DISPLAY_SIDE."""
    h, w = image.shape[-2:]
    if max(h, w) < MIN_DISPLAY_SIDE:
        factor = -(-MIN_DISPLAY_SIDE // max(h, w))
        return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    scale = min(1.0, side / max(h, w))
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def rollout_overlay(image: torch.Tensor, rollout_map: np.ndarray) -> bytes:
    """PNG of the rollout heat map (min-max scaled) blended over the image, at the image's aspect ratio."""
    rgb = to_rgb(display_copy(image)[None])
    mask = unit_range(upsample(rollout_map[None], rgb.shape[1:3]))
    return png_bytes(overlay(rgb[0], mask[0]))


def head_maps(maps: np.ndarray) -> list[bytes]:
    """One PNG per head of (heads, gh, gw) maps, each min-max scaled on its own, colour-mapped, enlarged."""
    colours = colorize(unit_range(maps, axes=(1, 2)))
    return [png_bytes(tile) for tile in enlarge(colours, HEAD_SIDE)]


def png_bytes(rgb01: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(rgb01, 0, 1) * 255).round().astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
