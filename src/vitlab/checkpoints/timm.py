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

from ..data.preprocessing import INTERPOLATIONS, Preprocessing, mean_std, model_defaults
from ..fileio import atomic_write
from ..models import ViTConfig, VisionTransformer
from .errors import CheckpointError
from .files import read_json, read_tensors
from .mapping import (Pair, add_class_slot, as_float32, checkpoint_image_size, config_with_overrides,
                      count_indexed, export_tensors, heads_for_width, is_square, load_into_model,
                      token_stride, width_factor)

RENAMES = (  # (ours, timm) as regular expressions on the key
    (r"^pre_logits\.", "pre_logits.fc."),
    (r"^patch_embed\.backbone\.root\.", "patch_embed.backbone.stem."),
    (r"^patch_embed\.backbone\.stages\.(\d+)\.(\d+)\.", r"patch_embed.backbone.stages.\1.blocks.\2."),
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.norm."),
)
BACKBONE = "patch_embed.backbone."
TIMM_HYBRID_EPS = dict(ws_eps=1e-8, gn_eps=1e-5, ws_eps_in_sqrt=True)
HINTS = {
    "norm_pre": "a LayerNorm before the blocks (CLIP-style norm_pre) is not part of the paper's ViT",
    "q_norm": "query/key normalisation is not part of the paper's ViT",
}


def timm_name(key: str) -> str:
    for ours, theirs in RENAMES:
        key = re.sub(ours, theirs, key)
    return key


def timm_pairs(cfg: ViTConfig) -> list[Pair]:
    with torch.device("meta"):
        keys = list(VisionTransformer(cfg).state_dict())
    pairs = [Pair(k, timm_name(k)) for k in keys]
    if cfg.resnet_layers == ():  # timm's zero-stage hybrid: the ResNet stem is the whole backbone
        pairs = [Pair(p.ours, p.theirs.replace(BACKBONE + "stem.", BACKBONE)) for p in pairs]
    return pairs


def staged_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A zero-stage hybrid's `patch_embed.backbone.conv/norm` seen as the stem of a ResNet with no stages (to
    infer the architecture; `timm_pairs` maps the file's own names)."""
    if BACKBONE + "conv.weight" not in tensors:
        return tensors
    return {(BACKBONE + "stem." + k[len(BACKBONE):] if k.startswith(BACKBONE) else k): v for k, v in tensors.items()}


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
    cfg.update(family_settings(t))
    prefix_tokens = [k for k in ("cls_token", "dist_token", "reg_token") if k in t]
    if "attn_pool.latent" in t and prefix_tokens:
        raise CheckpointError(f"{path}: timm's attention pool over {', '.join(prefix_tokens)} as well as the patches "
                              "is not supported (vitlab's MAP head pools the patch tokens, as big_vision's does)")
    stem = BACKBONE
    if any(k.startswith(stem) for k in t):
        if stem + "stem.conv.weight" not in t:
            raise CheckpointError(f"{path}: a timm hybrid whose backbone is not a ResNetV2 (no "
                                  f"'{stem}stem.conv.weight' or '{stem}conv.weight') is not supported")
        stages = count_indexed(t, stem + "stages.{}.blocks.0.conv1.weight")
        cfg.update(TIMM_HYBRID_EPS,
                   resnet_layers=tuple(count_indexed(t, f"{stem}stages.{s}.blocks.{{}}.conv1.weight")
                                       for s in range(stages)),
                   resnet_width=width_factor(t[stem + "stem.conv.weight"].shape[0]),
                   in_chans=t[stem + "stem.conv.weight"].shape[1])
    stride = infer_stride(t)
    if "pos_embed" not in t:
        raise CheckpointError(f"{path}: not a ViT checkpoint: missing key 'pos_embed'")
    prefix = int("cls_token" in t) + int("dist_token" in t)
    cfg["image_size"] = checkpoint_image_size(t["pos_embed"].shape[1] - prefix, stride, path, "pos_embed",
                                              image_size_hint)
    return cfg


def family_settings(t: dict[str, torch.Tensor]) -> dict:
    """The settings of ViT's successors that a timm state dict shows by its keys (only those present, so a
    plain ViT's config is unchanged): DeiT's distillation token, registers, LayerScale, fc_norm, MAP."""
    out = {}
    if "dist_token" in t:
        out["distill_token"] = True
    if "reg_token" in t:
        out["reg_tokens"] = t["reg_token"].shape[1]
    if "blocks.0.ls1.gamma" in t:
        out["layer_scale"] = 1e-5  # timm's init_values; the file's own scales are what is loaded
    if "fc_norm.weight" in t:
        out["fc_norm"] = True
        out["classifier"] = "gap"
    if "attn_pool.latent" in t:
        out["classifier"] = "map"
    if "cls_token" in t and out.get("classifier", "token") != "token":
        out["class_token"] = True
    return out


def load_timm(path: Path, tensors: dict[str, torch.Tensor] | None = None, image_size_hint=None,
              **overrides) -> nn.Module:
    """Load a timm ViT state dict (.safetensors, or .pth/.bin read with weights_only=True)."""
    path = Path(path)
    tensors = as_float32(read_tensors(path) if tensors is None else tensors)
    if not is_timm_state_dict(tensors):
        raise CheckpointError(f"{path}: not a timm ViT state dict (no 'patch_embed.proj.weight' / "
                              f"'blocks.0.attn.qkv.weight'; found e.g. {sorted(tensors)[:5]})")
    if "pos_embed" in tensors:
        tensors["pos_embed"] = embedded_prefix_rows(staged_names(tensors), image_size_hint, path)
    inferred = infer_config(staged_names(tensors), path, overrides.get("num_heads"), image_size_hint)
    cfg = config_with_overrides(inferred, overrides, path)
    model = load_into_model(cfg, tensors, timm_pairs(cfg), path, HINTS)
    settings = path.parent / "config.json"  # a timm Hub repository's, beside its weights
    model.label_names = None
    model.preprocessing = timm_record(read_json(settings) if settings.is_file() else None, model)
    return model


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timm_record(config: dict | None, model: nn.Module) -> Preprocessing:
    """timm's pretrained_cfg (from the config.json the Hub keeps beside the weights); without one, timm's
    defaults for ImageNet ViTs: ImageNet mean/std, centre crop 0.875, bicubic."""
    cfg = (config or {}).get("pretrained_cfg") or {}
    crop_pct = cfg.get("crop_pct", 0.875)
    interpolation = cfg.get("interpolation", "bicubic")
    names = (config or {}).get("label_names")
    record = dict(model_defaults(model), resize_crop=crop_pct < 1.0, crop_fraction=min(float(crop_pct), 1.0),
                  interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
                  **mean_std(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), 3))
    if names:
        record["label_names"] = names
    return Preprocessing(**record)


TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16, "giant": 16, "gigantic": 16}


def is_timm_folder(path: Path) -> bool:
    """A timm Hub repository: model.safetensors beside a config.json naming timm's `architecture`."""
    config = Path(path) / "config.json"
    return config.is_file() and "architecture" in read_json(config)


def load_timm_folder(folder: Path, image_size_hint=None, **overrides) -> nn.Module:
    """A timm Hub folder: the weights as a timm state dict, with what config.json adds (heads, resolution, label
    names; load_timm reads the preprocessing record from its pretrained_cfg: `timm_record`)."""
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
    labels = meta.get("label_names")
    model.label_names = list(labels) if labels and len(labels) == model.config.num_classes else None
    return model


def embedded_prefix_rows(tensors: dict, image_size_hint, path: Path) -> torch.Tensor:
    """timm's position table with a row for each of [class] and distillation tokens, as vitlab's has.

    timm's no_embed_class=True tables (DeiT III, registers) have one row per patch: those tokens get zero rows,
    which is what adding nothing to them computes. A table with rows for the registers too (timm's
    no_embed_class=False with reg_tokens) cannot be expressed: vitlab's registers take no position embedding."""
    table = tensors["pos_embed"]
    rows, embedded = table.shape[1], int("cls_token" in tensors) + int("dist_token" in tensors)
    registers = tensors["reg_token"].shape[1] if "reg_token" in tensors else 0
    if image_size_hint is not None:
        stride = infer_stride(tensors)
        h, w = (image_size_hint, image_size_hint) if isinstance(image_size_hint, int) else image_size_hint
        is_grid = lambda n: n == (h // stride) * (w // stride)  # noqa: E731
    else:
        is_grid = lambda n: is_square(n) and n > 0  # noqa: E731
    if embedded and not is_grid(rows - embedded) and is_grid(rows):
        return add_class_slot(table, embedded)
    if registers and not is_grid(rows - embedded) and is_grid(rows - embedded - registers):
        raise CheckpointError(f"{path}: 'pos_embed' has rows for the {registers} register tokens (timm's "
                              "no_embed_class=False); vitlab's registers take no position embedding")
    return table


def infer_stride(tensors: dict) -> int:
    patch = tensors["patch_embed.proj.weight"].shape[-1]
    if "patch_embed.backbone.stem.conv.weight" not in tensors:
        return patch
    stages = count_indexed(tensors, "patch_embed.backbone.stages.{}.blocks.0.conv1.weight")
    return token_stride(patch, (1,) * stages)


def timm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    cfg = model.config
    extras = [what for what, on in (("shifted patch tokens", cfg.patch_embed != "linear"),
                                    ("locality self-attention", cfg.attention == "lsa")) if on]
    if extras:
        raise CheckpointError(f"cannot export to timm: the model has {' and '.join(extras)}, which timm's "
                              "VisionTransformer has no names for; use --to vitlab")
    tensors = export_tensors(model.state_dict(), timm_pairs(cfg))
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_timm(model: nn.Module, path: str | Path) -> Path:
    """Write `model` as a timm state dict in safetensors (what timm's `pretrained_cfg_overlay=dict(file=...)` reads)."""
    path = Path(path)
    tensors = timm_state_dict(model)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return path
