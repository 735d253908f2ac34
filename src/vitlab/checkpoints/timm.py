"""timm ViT state dicts (timm/models/vision_transformer.py and vision_transformer_hybrid.py), in and out.

timm's names are ours except in three places:

    ours                                          timm
    pre_logits.{weight,bias}                      pre_logits.fc.{weight,bias}   (timm < 0.9; removed since)
    patch_embed.backbone.root.{conv,norm}         patch_embed.backbone.stem.{conv,norm}
    patch_embed.backbone.stages.S.U.X             patch_embed.backbone.stages.S.blocks.U.X
    ...downsample.0 / downsample.1                ...downsample.conv / downsample.norm

A state dict stores no head count: `num_heads=` from the caller wins, else the standard width table.
timm's hybrids (ResNetV2 with preact=False) standardise weights with eps 1e-8 and use GroupNorm eps 1e-5 (the
official code: 1e-5 and 1e-6); a hybrid loaded from timm gets timm's values. timm's ViT uses the exact GELU.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..fileio import atomic_write
from ..models import ViTConfig, VisionTransformer
from .files import read_json, read_tensors
from .mapping import (CheckpointError, Pair, add_class_slot, as_float32, checkpoint_image_size, config_with_overrides,
                      count_indexed, export_tensors, heads_for_width, is_square, load_into_model,
                      token_stride, width_factor)

RENAMES = (  # (ours, timm) as regular expressions on the key
    (r"^pre_logits\.", "pre_logits.fc."),
    (r"^patch_embed\.backbone\.root\.", "patch_embed.backbone.stem."),
    (r"^patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.", r"patch_embed.backbone.stages.\1.blocks.\2."),
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.norm."),
)
TIMM_HYBRID_EPS = dict(ws_eps=1e-8, gn_eps=1e-5, ws_eps_in_sqrt=True)
HINTS = {
    "fc_norm": "timm's fc_norm (LayerNorm after average pooling) is not the paper's ViT and is not supported",
    "reg_token": "register tokens are not part of the paper's ViT and are not supported",
    "dist_token": "DeiT's distillation token is not supported (use a non-distilled DeiT checkpoint)",
    ".ls1.": "LayerScale (ls1/ls2) is not part of the paper's ViT and is not supported",
    "norm_pre": "a LayerNorm before the blocks (CLIP-style norm_pre) is not part of the paper's ViT",
    "q_norm": "query/key normalisation is not part of the paper's ViT",
    "attn_pool": "attention pooling (MAP head) is not part of the paper's ViT",
}


def timm_name(key: str) -> str:
    for ours, theirs in RENAMES:
        key = re.sub(ours, theirs, key)
    return key


def timm_pairs(cfg: ViTConfig) -> list[Pair]:
    with torch.device("meta"):
        keys = list(VisionTransformer(cfg).state_dict())
    return [Pair(k, timm_name(k)) for k in keys]


def is_timm_state_dict(tensors: dict) -> bool:
    return "patch_embed.proj.weight" in tensors and "blocks.0.attn.qkv.weight" in tensors


def infer_config(t: dict[str, torch.Tensor], path: Path, num_heads: int | None, image_size_hint=None) -> dict:
    proj = t["patch_embed.proj.weight"]  # (D, C, P, P)
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"{path}: 'patch_embed.proj.weight' has shape {tuple(proj.shape)}, not (D, C, P, P)")
    width = proj.shape[0]
    cfg = dict(patch_size=proj.shape[2], width=width, in_chans=proj.shape[1], gelu="exact", layer_norm_eps=1e-6,
               depth=count_indexed(t, "blocks.{}.norm1.weight"),
               num_heads=num_heads or heads_for_width(width, path),
               mlp_dim=t["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in t else 4 * width,
               qkv_bias="blocks.0.attn.qkv.bias" in t,
               classifier="token" if "cls_token" in t else "gap",
               representation_size=t["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in t else None,
               num_classes=t["head.weight"].shape[0] if "head.weight" in t else 0)
    stem = "patch_embed.backbone."
    if any(k.startswith(stem) for k in t):
        if stem + "stem.conv.weight" not in t:
            raise CheckpointError(f"{path}: a timm hybrid without ResNet stages (or another backbone than "
                                  "ResNetV2) is not supported")
        stages = count_indexed(t, stem + "stages.{}.blocks.0.conv1.weight")
        cfg.update(TIMM_HYBRID_EPS,
                   resnet_layers=tuple(count_indexed(t, f"{stem}stages.{s}.blocks.{{}}.conv1.weight")
                                       for s in range(stages)),
                   resnet_width=width_factor(t[stem + "stem.conv.weight"].shape[0]),
                   in_chans=t[stem + "stem.conv.weight"].shape[1])
    stride = infer_stride(t)
    if "pos_embed" not in t:
        raise CheckpointError(f"{path}: not a ViT checkpoint: missing key 'pos_embed'")
    prefix = 1 if cfg["classifier"] == "token" else 0
    cfg["image_size"] = checkpoint_image_size(t["pos_embed"].shape[1] - prefix, stride, path, "pos_embed",
                                              image_size_hint)
    return cfg


def load_timm(path: Path, tensors: dict[str, torch.Tensor] | None = None, image_size_hint=None,
              **overrides) -> nn.Module:
    """Load a timm ViT state dict (.safetensors, or .pth/.bin read with weights_only=True)."""
    path = Path(path)
    tensors = as_float32(read_tensors(path) if tensors is None else tensors)
    if not is_timm_state_dict(tensors):
        raise CheckpointError(f"{path}: not a timm ViT state dict (no 'patch_embed.proj.weight' / "
                              f"'blocks.0.attn.qkv.weight'; found e.g. {sorted(tensors)[:5]})")
    if "pos_embed" in tensors and "cls_token" in tensors and lacks_class_row(tensors["pos_embed"].shape[1],
                                                                             image_size_hint, tensors):
        tensors["pos_embed"] = add_class_slot(tensors["pos_embed"])  # timm's no_embed_class=True
    cfg = config_with_overrides(infer_config(tensors, path, overrides.get("num_heads"), image_size_hint), overrides, path)
    model = load_into_model(cfg, tensors, timm_pairs(cfg), path, HINTS)
    model.label_names, model.preprocessing = None, None
    return model


TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16, "giant": 16, "gigantic": 16}


def is_timm_folder(path: Path) -> bool:
    """A timm Hub repository: model.safetensors beside a config.json naming timm's `architecture`."""
    config = Path(path) / "config.json"
    return config.is_file() and "architecture" in read_json(config)


def load_timm_folder(folder: Path, image_size_hint=None, **overrides) -> nn.Module:
    """A timm Hub folder: the weights as a timm state dict, with what config.json adds (heads, resolution,
    normalisation, label names)."""
    meta = read_json(folder / "config.json")
    pretrained_cfg = meta.get("pretrained_cfg") or {}
    model_args = meta.get("model_args") or {}
    size = re.search(r"vit_(\w+?)_", meta.get("architecture", ""))
    heads = model_args.get("num_heads") or (TIMM_HEADS.get(size[1]) if size else None)
    if heads and "num_heads" not in overrides:
        overrides["num_heads"] = heads
    if image_size_hint is None and "img_size" in model_args:
        image_size_hint = model_args["img_size"]
    elif image_size_hint is None and len(pretrained_cfg.get("input_size") or ()) == 3:
        h, w = pretrained_cfg["input_size"][1:]
        image_size_hint = h if h == w else (h, w)
    model = load_timm(folder / "model.safetensors", image_size_hint=image_size_hint, **overrides)
    if "mean" in pretrained_cfg and "std" in pretrained_cfg:
        model.preprocessing = {"normalisation": "mean_std", "mean": list(pretrained_cfg["mean"]),
                               "std": list(pretrained_cfg["std"])}
    labels = meta.get("label_names")
    model.label_names = list(labels) if labels and len(labels) == model.config.num_classes else None
    return model


def lacks_class_row(rows: int, image_size_hint, tensors: dict) -> bool:
    """timm's no_embed_class tables have one row per patch; the usual ones one more, for the class token."""
    if image_size_hint is not None:
        stride = infer_stride(tensors)
        h, w = (image_size_hint, image_size_hint) if isinstance(image_size_hint, int) else image_size_hint
        return (h // stride) * (w // stride) == rows
    return is_square(rows) and not is_square(rows - 1)


def infer_stride(tensors: dict) -> int:
    patch = tensors["patch_embed.proj.weight"].shape[-1]
    if "patch_embed.backbone.stem.conv.weight" not in tensors:
        return patch
    stages = count_indexed(tensors, "patch_embed.backbone.stages.{}.blocks.0.conv1.weight")
    return token_stride(patch, (1,) * stages)


def timm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = export_tensors(model.state_dict(), timm_pairs(model.config))
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_timm(model: nn.Module, path: str | Path) -> Path:
    """Write `model` as a timm state dict in safetensors (what timm's `pretrained_cfg_overlay=dict(file=...)` reads)."""
    path = Path(path)
    tensors = timm_state_dict(model)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return path
