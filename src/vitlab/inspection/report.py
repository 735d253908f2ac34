"""All inspection figures for one model, written into one directory (what `vitlab inspect` runs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from . import figures
from .attention import attention_weights, check_vit
from .distance import attention_distance, mean_attention_distance, uniform_attention_distance
from .filters import embedding_filters
from .images import normalise
from .posemb import posemb_similarity
from .rollout import attention_rollout, class_attention

FIGURES = ("rollout", "distance", "posemb", "filters")


def inspect_model(model: nn.Module, out_dir: str | Path, images: torch.Tensor, captions: list[str], *,
                  distance_batches: Iterable[torch.Tensor] | None = None, distance_total: int | None = None,
                  figures_wanted: Iterable[str] = FIGURES, batch_size: int = 16, label: str = "",
                  progress: bool = True, precision: str = "fp32") -> dict[str, Path]:
    """Write the paper's inspection figures for `model` into `out_dir`; returns {what: path}.

    images: pixels (B, C, H, W) in [0, 255] (uint8 or float) at the model's input size, drawn with their
    attention rollout and their raw last-layer attention per head. The mean attention distance is averaged over
    `distance_batches` (pixel batches, streamed, so there may be many) or, without them, over `images`. The
    forward passes are autocast to `precision` (fp32, bf16, fp16).
    """
    cfg = check_vit(model)
    wanted = set(figures_wanted)
    unknown = wanted - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)}; choose from {list(FIGURES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label = label or describe(cfg)
    written: dict[str, Path] = {}

    distances = count = None
    if "rollout" in wanted or ("distance" in wanted and distance_batches is None):
        seen = analyse(model, images, batch_size, precision)  # one pass over the shown images serves both
        if "rollout" in wanted:
            written.update(write_attention_maps(model, out, images, captions, seen, label))
        distances, count = seen["distances"].mean(axis=0), len(images)
    if "distance" in wanted:
        if distance_batches is not None:
            device = next(model.parameters()).device
            inputs = (normalise(batch, model).to(device) for batch in distance_batches)
            distances, count = attention_distance(model, inputs, total=distance_total, progress=progress,
                                                  precision=precision)
        uniform = uniform_attention_distance(cfg.grid_size, cfg.stride)
        written["attention_distance"] = figures.plot_attention_distance(
            distances, out / "attention_distance.png", uniform=uniform, num_images=count, title=label)
        written["attention_distance_csv"] = figures.write_distance_csv(distances, out / "attention_distance.csv",
                                                                       count)
    if "posemb" in wanted and cfg.posemb not in ("none", "relative"):  # those add no table to draw
        written["posemb_similarity"] = figures.plot_posemb_similarity(
            posemb_similarity(model), out / "posemb_similarity.png", title=f"{label}: position embedding similarity")
    if "filters" in wanted and cfg.resnet_layers is None:  # a hybrid's 1x1 filters have no picture
        components, explained = embedding_filters(model)
        written["embedding_filters"] = figures.plot_filters(components, out / "embedding_filters.png",
                                                            explained=explained, title=label)
    return written


def analyse(model: nn.Module, images: torch.Tensor, batch_size: int, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Per image: rollout map, last-layer attention per head, logits and mean attention distance per head."""
    cfg = model.config
    device = next(model.parameters()).device
    parts: dict[str, list] = {"rollout": [], "heads": [], "logits": [], "distances": []}
    for batch in images.split(batch_size):
        logits, attentions = attention_weights(model, normalise(batch, model).to(device), precision)
        attentions = [a.cpu() for a in attentions]
        parts["rollout"].append(attention_rollout(attentions, model.num_prefix_tokens, cfg.grid_size,
                                                  cfg.has_class_token))
        parts["heads"].append(class_attention(attentions[-1], model.num_prefix_tokens, cfg.grid_size,
                                              cfg.has_class_token))
        parts["logits"].append(logits.float().cpu().numpy())
        parts["distances"].append(mean_attention_distance(attentions, cfg.grid_size, cfg.stride,
                                                          model.num_prefix_tokens))
    return {k: np.concatenate(v) for k, v in parts.items()}


def write_attention_maps(model: nn.Module, out: Path, images: torch.Tensor, captions: list[str],
                         seen: dict[str, np.ndarray], label: str) -> dict[str, Path]:
    """Rollout overlays (one file per image and a grid) and the last layer's [class] attention per head."""
    captions = with_predictions(captions, seen["logits"], getattr(model, "label_names", None))
    rgb = figures.to_rgb(images)
    written = {}
    for i, caption in enumerate(captions):
        path = out / "rollout" / f"{i:03d}_{slug(caption)}.png"
        written[f"rollout/{i:03d}"] = figures.save_rollout_overlay(rgb[i], seen["rollout"][i], path)
    written["rollout"] = figures.plot_rollout_grid(rgb, seen["rollout"], captions, out / "rollout.png")
    query = "[class] token" if model.config.has_class_token else "mean over tokens"
    written["attention_heads"] = figures.plot_class_attention(
        rgb, seen["heads"], captions, out / "attention_heads.png",
        title=f"{label}\nlast-layer attention per head ({query})")
    return written


def describe(cfg) -> str:
    """A short name for a model's architecture, for figure titles: "ViT-6x64/4 at 28x28 px"."""
    stem = "R50+ViT" if cfg.resnet_layers is not None else "ViT"
    return f"{stem}-{cfg.depth}x{cfg.width}/{cfg.patch_size} at {cfg.image_hw[0]}x{cfg.image_hw[1]} px"


def with_predictions(captions: list[str], logits: np.ndarray, label_names: list[str] | None) -> list[str]:
    """Append the model's top-1 class (and its probability) to each caption, where the model has class names."""
    if not label_names or logits.ndim != 2 or logits.shape[1] != len(label_names):
        return captions
    probs = torch.as_tensor(logits).softmax(dim=1)
    p, k = probs.max(dim=1)
    return [f"{c} -> {label_names[j]} ({100 * q:.0f}%)" for c, j, q in zip(captions, k.tolist(), p.tolist())]


def slug(text: str) -> str:
    """A caption as a safe file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.split(" -> ")[0]).strip("_")[:40] or "image"
