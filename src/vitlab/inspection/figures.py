"""The inspection figures, drawn with matplotlib (Agg) or written directly as images; every file written atomically.

Figure sizes are fixed by their content (no tight bounding box), so a figure's pixel size is predictable.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from ..fileio import atomic_path, atomic_write_text  # noqa: E402

DPI = 100
HEATMAP = "inferno"
MIN_TILE = 224  # per-image overlays are enlarged to at least this many pixels on the long side


# ---- array helpers ---------------------------------------------------------------------------------------------
def to_rgb(images: torch.Tensor) -> np.ndarray:
    """Pixels (B, C, H, W) in [0, 255], C = 1 or 3 (uint8 or float) -> float (B, H, W, 3) in [0, 1]."""
    x = images.detach().cpu().float().div(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def upsample(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(B, gh, gw) -> (B, H, W), bilinear."""
    x = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)[:, 0].numpy()


def unit_range(x: np.ndarray, axes=None) -> np.ndarray:
    """Min-max normalise to [0, 1] over `axes` (all by default); a constant array becomes zeros."""
    lo = np.min(x, axis=axes, keepdims=True)
    span = np.max(x, axis=axes, keepdims=True) - lo
    return (x - lo) / np.where(span > 0, span, 1.0)


def colorize(x01: np.ndarray, cmap: str = HEATMAP) -> np.ndarray:
    """[0, 1] values (...,) -> RGB (..., 3)."""
    return matplotlib.colormaps[cmap](x01)[..., :3]


def overlay(image: np.ndarray, map01: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a heat map (H, W) in [0, 1] over an RGB image (H, W, 3)."""
    return (1 - alpha) * image + alpha * colorize(map01)


def mosaic(tiles: np.ndarray, cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """(n, h, w[, c]) tiles -> one (rows*(h+pad)-pad, cols*(w+pad)-pad[, c]) array, row-major, gaps = `fill`."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad) + tiles.shape[3:], fill, dtype=np.float64)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return out


def enlarge(images: np.ndarray, min_side: int = MIN_TILE) -> np.ndarray:
    """(B, H, W, 3) enlarged by an integer factor (nearest) so the long side is >= min_side."""
    factor = max(1, math.ceil(min_side / max(images.shape[1:3])))
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


# ---- writing ---------------------------------------------------------------------------------------------------
def save_figure(fig, path: str | Path) -> Path:
    """Render a matplotlib figure at DPI and write it as a PNG (closing the figure)."""
    try:
        fig.set_dpi(DPI)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    finally:
        plt.close(fig)
    # an adaptive 256-colour palette halves the bytes; undithered, so white stays exactly white
    return save_png(Image.fromarray(pixels, "RGB").quantize(256, method=Image.Quantize.MEDIANCUT), path)


def save_rgb(array: np.ndarray, path: str | Path) -> Path:
    """Write an RGB float (H, W, 3) array in [0, 1] as a full-colour PNG."""
    return save_png(Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8), "RGB"), path)


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


# ---- Figures 6 and 14: attention rollout -----------------------------------------------------------------------
def rollout_panels(images: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input, heat-map overlay, input x mask as in the paper's Figure 6), each (B, H, W, 3) in [0, 1]."""
    masks = unit_range(upsample(maps, images.shape[1:3]), axes=(1, 2))
    return images, np.stack([overlay(i, m) for i, m in zip(images, masks)]), images * masks[..., None]


def save_rollout_overlay(image: np.ndarray, rollout_map: np.ndarray, path: str | Path) -> Path:
    """One image's rollout as [input | heat-map overlay | input x mask], enlarged to >= 224 px, as a PNG."""
    big = enlarge(image[None])
    panels = rollout_panels(big, rollout_map[None])
    return save_rgb(mosaic(np.concatenate(panels), cols=3, pad=4), path)


def plot_rollout_grid(images: np.ndarray, maps: np.ndarray, captions: list[str], path: str | Path,
                      cols: int = 4) -> Path:
    """All images, each as [input | rollout overlay] with its caption."""
    n = len(images)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    inputs, overlays, _ = rollout_panels(enlarge(images, 96), maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 1.7 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(mosaic(np.stack([inputs[i], overlays[i]]), cols=2, pad=2))
        ax.set_title(captions[i], fontsize=8)
    fig.suptitle("Attention rollout: input and what the representation attends to", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / fig.get_figheight(), wspace=0.05,
                        hspace=0.25)
    return save_figure(fig, path)


def plot_class_attention(images: np.ndarray, head_maps: np.ndarray, captions: list[str], path: str | Path,
                         title: str) -> Path:
    """One row per image: the image, then each head's raw attention map (each scaled to its own range)."""
    n, heads = head_maps.shape[:2]
    tile = (48, round(48 * images.shape[2] / images.shape[1]))  # keeps the image's aspect ratio
    small = upsample(images.transpose(0, 3, 1, 2).reshape(-1, *images.shape[1:3]), tile)
    small = small.reshape(n, 3, *tile).transpose(0, 2, 3, 1)
    maps = colorize(unit_range(upsample(head_maps.reshape(n * heads, *head_maps.shape[2:]), tile),
                               axes=(1, 2))).reshape(n, heads, *tile, 3)
    left = 0.3 + 0.055 * max(len(c) for c in captions)  # inches for the captions at 7 pt
    fig, axes = plt.subplots(n, 1, figsize=(0.55 * (heads + 1) * tile[1] / tile[0] + left, 0.6 * n + 0.85),
                             squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.imshow(mosaic(np.concatenate([np.clip(small[i:i + 1], 0, 1), maps[i]]), cols=heads + 1, pad=3))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(captions[i], rotation=0, ha="right", va="center", fontsize=7)
        for side in ax.spines.values():
            side.set_visible(False)
    top = axes[0, 0]
    top.xaxis.tick_top()
    top.set_xticks([(tile[1] + 3) * j + tile[1] / 2 for j in range(heads + 1)])
    top.set_xticklabels(["input"] + [f"h{j + 1}" for j in range(heads)], fontsize=7)
    top.tick_params(length=0)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=left / fig.get_figwidth(), right=0.99, bottom=0.02,
                        top=1 - 0.7 / fig.get_figheight(), hspace=0.08)
    return save_figure(fig, path)


# ---- Figure 7, right: mean attention distance ------------------------------------------------------------------
def plot_attention_distance(distances: np.ndarray, path: str | Path, *, uniform: float | None = None,
                            num_images: int | None = None, title: str = "") -> Path:
    """Each head's mean attention distance (pixels) against its layer, like the paper's Figure 7 (right)."""
    layers, heads = distances.shape
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colors = matplotlib.colormaps["tab20"] if heads > 10 else matplotlib.colormaps["tab10"]
    for h in range(heads):
        ax.scatter(np.arange(1, layers + 1), distances[:, h], s=14, color=colors(h % colors.N),
                   label=f"Head {h + 1}" if heads <= 16 else None)
    if uniform is not None:
        ax.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform attention")
    top = max(float(np.max(distances)), uniform or 0.0)
    ax.set_ylim(0, top * 1.08 if top > 0 else 1)
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_xticks(range(1, layers + 1, max(1, layers // 12)))
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    seen = f", mean over {num_images} image{'s' if num_images != 1 else ''}" if num_images else ""
    ax.set_title(f"{title}{seen}", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2 if heads > 8 else 1, loc="lower right", markerscale=0.8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_distance_csv(distances: np.ndarray, path: str | Path, num_images: int) -> Path:
    """layer,head,mean_distance_px,num_images (layers and heads counted from 1)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "head", "mean_distance_px", "num_images"])
    for (layer, head), value in np.ndenumerate(distances):
        writer.writerow([layer + 1, head + 1, f"{value:.4f}", num_images])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


# ---- Figure 7, centre: position-embedding similarity -----------------------------------------------------------
def plot_posemb_similarity(similarity: np.ndarray, path: str | Path, title: str = "") -> Path:
    """A (gh x gw) grid of (gh x gw) maps: tile (r, c) is the similarity of patch (r, c) with every patch."""
    gh, gw = similarity.shape[:2]
    pad = 1
    image = mosaic(similarity.reshape(gh * gw, gh, gw), cols=gw, pad=pad, fill=np.nan)
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    shown = ax.imshow(image, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    step = max(1, math.ceil(max(gh, gw) / 16))
    ax.set_xticks([(gw + pad) * c + (gw - 1) / 2 for c in range(0, gw, step)])
    ax.set_xticklabels([str(c + 1) for c in range(0, gw, step)], fontsize=7)
    ax.set_yticks([(gh + pad) * r + (gh - 1) / 2 for r in range(0, gh, step)])
    ax.set_yticklabels([str(r + 1) for r in range(0, gh, step)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title(title or "Position embedding similarity", fontsize=10)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label="Cosine similarity")
    fig.subplots_adjust(left=0.1, right=0.86, bottom=0.09, top=0.93)
    return save_figure(fig, path)


# ---- Figure 7, left: embedding filters -------------------------------------------------------------------------
def plot_filters(components: np.ndarray, path: str | Path, *, explained: np.ndarray | None = None,
                 title: str = "", cols: int = 7) -> Path:
    """Principal components (k, C, P, P) as RGB tiles (grey when C == 1), each scaled to its own range."""
    k, channels = components.shape[:2]
    tiles = unit_range(components, axes=(1, 2, 3)).transpose(0, 2, 3, 1)
    if channels == 1:
        tiles = tiles.repeat(3, axis=-1)
    elif channels != 3:
        raise ValueError(f"embedding filters with {channels} input channels cannot be shown as RGB")
    cols = min(cols, k)
    rows = math.ceil(k / cols)
    pad = max(1, components.shape[-1] // 8)
    fig, ax = plt.subplots(figsize=(0.8 * cols + 0.4, 0.8 * rows + 0.7))
    ax.imshow(mosaic(tiles, cols=cols, pad=pad), interpolation="nearest")
    ax.axis("off")
    share = f"; {100 * explained.sum():.0f}% of the variance" if explained is not None else ""
    ax.set_title(f"{title or 'Embedding filters'}: first {k} principal components{share}", fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / fig.get_figheight())
    return save_figure(fig, path)
