"""What a self-supervised checkpoint predicts: for a few images, the original, what the objective hid or
corrupted, and its predictions (MPP's mean colours, MAE's reconstructions), as one figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import figures
from .images import normalise

MARK_COLOURS = {1: "#e41a1c", 2: "#377eb8", 3: "#4daf4a"}  # MPP: masked, replaced, kept; MAE: hidden
MARK_NAMES = {"mpp": {1: "[mask]", 2: "random patch", 3: "kept"}, "mae": {1: "hidden"}}


@torch.no_grad()
def draw_objective_predictions(model: nn.Module, objective, images: torch.Tensor, captions: list[str],
                               path: str | Path, *, title: str = "", seed: int = 0) -> Path:
    """images: pixels (B, C, H, W) in [0, 255] at the model's size. The corruption / masking is drawn with a fixed seed."""
    device = next(model.parameters()).device
    model.eval()
    objective.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    panels = objective.illustrate(model, normalise(images, model).to(device), generator)
    marks = panels.pop("marks").cpu().numpy()
    columns = {"original": images, **panels}
    return plot_panels({k: figures.to_rgb(v.clamp(0, 255)) for k, v in columns.items()}, marks, captions,
                       path, patch=objective.patch, legend=MARK_NAMES.get(objective.name, {}), title=title)


def plot_panels(columns: dict[str, np.ndarray], marks: np.ndarray, captions: list[str], path: str | Path, *,
                patch: int, legend: dict, title: str = "") -> Path:
    """One row per image, one column per panel; the patches the objective touched are outlined in the second
    column (colour by kind, see MARK_COLOURS)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    names = list(columns)
    rows = len(captions)
    fig, axes = plt.subplots(rows, len(names), figsize=(2.1 * len(names), 2.2 * rows + 0.6), squeeze=False)
    width = columns[names[0]].shape[2] // patch
    for r in range(rows):
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(columns[name][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(captions[r], fontsize=8)
            if c == 1:
                for index in np.flatnonzero(marks[r]):
                    y, x = divmod(int(index), width)
                    ax.add_patch(Rectangle((x * patch - 0.5, y * patch - 0.5), patch, patch, fill=False, lw=1.2,
                                           edgecolor=MARK_COLOURS[int(marks[r].flat[index])]))
    if legend:
        handles = [Patch(facecolor="none", edgecolor=MARK_COLOURS[k], label=v) for k, v in legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if legend else 0, 1, 1))
    return figures.save_figure(fig, path)
