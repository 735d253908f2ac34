"""The official ViT .npz files (github.com/google-research/vision_transformer), in and out.

A flat `np.savez` of the Flax parameters, '/'-joined, with the pre-linen module names:

    embedding/{kernel (P,P,C,D), bias}            cls (1,1,D)   (token classifier only)
    Transformer/posembed_input/pos_embedding      (1, [1+] gh*gw, D)
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}
        .../MultiHeadDotProductAttention_1/{query,key,value}/{kernel (D,heads,hd), bias (heads,hd)}
        .../MultiHeadDotProductAttention_1/out/{kernel (heads,hd,D), bias (D,)}
        .../LayerNorm_2/{scale,bias}    .../MlpBlock_3/Dense_{0,1}/{kernel (in,out), bias}
    Transformer/encoder_norm/{scale,bias}    pre_logits/{kernel,bias}    head/{kernel,bias}
    hybrid: conv_root/kernel, gn_root/{scale,bias},
        block{s}/unit{u}/{conv1,conv2,conv3,conv_proj}/kernel, .../{gn1,gn2,gn3,gn_proj}/{scale,bias}

The position table always has the class row when there is a class token. Convolutions are HWIO (ours OIHW); dense kernels are (in, out) (ours (out, in)). The official code uses the
tanh-approximate GELU, LayerNorm eps 1e-6, weight standardisation eps 1e-5 and SAME padding: a model loaded
from such a file gets exactly those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import Preprocessing, model_defaults
from ..fileio import atomic_write
from ..models import ViTConfig
from .big_vision import is_big_vision, to_official_names  # big_vision is the same Flax model, renamed
from .errors import CheckpointError
from .files import read_npz
from .mapping import (Pair, checkpoint_image_size, config_with_overrides, count_indexed,
                      export_tensors, load_into_model, token_stride, width_factor)

BLOCK = "Transformer/encoderblock_{}/"
ATTN, LN1, LN2, MLP = "MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3"
POSEMB = "Transformer/posembed_input/pos_embedding"
MAP_HEAD = "MAPHead_0"  # big_vision's attention-pooling head (pool_type="map")
PREFIXES = ("", "opt/target/", "params/", "params/img/")  # bare; old flax optimiser checkpoints; big_vision
OFFICIAL = dict(gelu="tanh", layer_norm_eps=1e-6, ws_eps=1e-5, gn_eps=1e-6)
HINTS: dict[str, str] = {}


# ---- layout conversions (each with its inverse) --------------------------------------------------------------
def conv_to_hwio(w):
    return w.permute(2, 3, 1, 0)


def conv_from_hwio(k):
    return k.permute(3, 2, 0, 1)


def dense_t(w):  # (out, in) <-> (in, out): its own inverse
    return w.t()


def attention_pairs(cfg: ViTConfig, theirs: str, ours: tuple[tuple[str, int, int], ...], out: str,
                    bias: bool = True) -> list[Pair]:
    """Flax attention (`theirs`/{query,key,value,out}) <-> our projections: `ours` gives, for query, key and
    value in turn, (our Linear, which part of it, of how many parts); `out` our output Linear."""
    D, H = cfg.width, cfg.num_heads
    hd = D // H
    pairs = [Pair(out + ".weight", theirs + "out/kernel", lambda w: w.t().reshape(H, hd, D),
                  lambda k: k.reshape(D, D).t()),
             Pair(out + ".bias", theirs + "out/bias")]
    for name, (linear, part, parts) in zip(("query", "key", "value"), ours):
        pairs.append(Pair(linear + ".weight", theirs + name + "/kernel", lambda w: w.t().reshape(D, H, hd),
                          lambda k: k.reshape(D, D).t(), part=part, parts=parts))
        if bias:
            pairs.append(Pair(linear + ".bias", theirs + name + "/bias", lambda b: b.reshape(H, hd),
                              lambda b: b.reshape(D), part=part, parts=parts))
    return pairs


def mlp_pairs(ours: str, theirs: str) -> list[Pair]:
    pairs = []
    for n, fc in ((0, "fc1"), (1, "fc2")):
        pairs.append(Pair(f"{ours}.{fc}.weight", f"{theirs}/Dense_{n}/kernel", dense_t, dense_t))
        pairs.append(Pair(f"{ours}.{fc}.bias", f"{theirs}/Dense_{n}/bias"))
    return pairs


def block_pairs(i: int, cfg: ViTConfig) -> list[Pair]:
    ours, theirs = f"blocks.{i}.", BLOCK.format(i)
    qkv = tuple((ours + "attn.qkv", j, 3) for j in range(3))
    return [*norm_pairs(ours + "norm1", theirs + LN1), *norm_pairs(ours + "norm2", theirs + LN2),
            *attention_pairs(cfg, theirs + ATTN + "/", qkv, ours + "attn.proj", bias=cfg.qkv_bias),
            *mlp_pairs(ours + "mlp", theirs + MLP)]


def map_head_pairs(cfg: ViTConfig) -> list[Pair]:
    """big_vision's MAPHead: probe, attention (query from the probe, key/value from the tokens), LN, MLP."""
    head = MAP_HEAD + "/"
    projections = (("attn_pool.q", 0, 1), ("attn_pool.kv", 0, 2), ("attn_pool.kv", 1, 2))
    return [Pair("attn_pool.latent", head + "probe"),
            *attention_pairs(cfg, head + "MultiHeadDotProductAttention_0/", projections, "attn_pool.proj"),
            *norm_pairs("attn_pool.norm", head + "LayerNorm_0"), *mlp_pairs("attn_pool.mlp", head + "MlpBlock_0")]


def norm_pairs(ours: str, theirs: str) -> list[Pair]:
    return [Pair(ours + ".weight", theirs + "/scale"), Pair(ours + ".bias", theirs + "/bias")]


def hybrid_pairs(cfg: ViTConfig) -> list[Pair]:
    stem = "patch_embed.backbone."
    pairs = [Pair(stem + "root.conv.weight", "conv_root/kernel", conv_to_hwio, conv_from_hwio),
             *norm_pairs(stem + "root.norm", "gn_root")]
    for s, units in enumerate(cfg.resnet_layers):
        for u in range(units):
            ours, theirs = f"{stem}stages.{s}.{u}.", f"block{s + 1}/unit{u + 1}/"
            for n in (1, 2, 3):
                pairs.append(Pair(ours + f"conv{n}.weight", theirs + f"conv{n}/kernel", conv_to_hwio, conv_from_hwio))
                pairs += norm_pairs(ours + f"norm{n}", theirs + f"gn{n}")
            if u == 0:  # the first unit of every stage changes width or stride, so it has a projection
                pairs.append(Pair(ours + "downsample.0.weight", theirs + "conv_proj/kernel", conv_to_hwio,
                                  conv_from_hwio))
                pairs += norm_pairs(ours + "downsample.1", theirs + "gn_proj")
    return pairs


def official_pairs(cfg: ViTConfig) -> list[Pair]:
    pairs = [Pair("patch_embed.proj.weight", "embedding/kernel", conv_to_hwio, conv_from_hwio),
             Pair("patch_embed.proj.bias", "embedding/bias")]
    if getattr(cfg, "posemb", "learned_1d") == "learned_1d":  # sincos_2d is computed, not stored
        pairs.append(Pair("pos_embed", POSEMB))
    if cfg.classifier == "token":
        pairs.append(Pair("cls_token", "cls"))
    if cfg.resnet_layers is not None:
        pairs += hybrid_pairs(cfg)
    for i in range(cfg.depth):
        pairs += block_pairs(i, cfg)
    pairs += norm_pairs("norm", "Transformer/encoder_norm")
    if cfg.classifier == "map":
        pairs += map_head_pairs(cfg)
    if cfg.representation_size:
        pairs += [Pair("pre_logits.weight", "pre_logits/kernel", dense_t, dense_t), Pair("pre_logits.bias", "pre_logits/bias")]
    if cfg.num_classes:
        pairs += [Pair("head.weight", "head/kernel", dense_t, dense_t), Pair("head.bias", "head/bias")]
    return pairs


# ---- reading ------------------------------------------------------------------------------------------------
def strip_prefix(arrays: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The parameters under whichever known prefix holds them (training checkpoints hold optimiser state too)."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if prefix + "embedding/kernel" in arrays:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    raise CheckpointError(f"{path}: not a ViT checkpoint (no 'embedding/kernel' array; found e.g. "
                          f"{sorted(arrays)[:5]})")


def infer_config(t: dict[str, torch.Tensor], path: Path, image_size_hint=None) -> dict:
    """The architecture, read from the shapes (the head count from the attention kernels)."""
    kernel = t["embedding/kernel"]
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise CheckpointError(f"{path}: 'embedding/kernel' has shape {tuple(kernel.shape)}, not (P, P, C, D)")
    cfg = dict(OFFICIAL, patch_size=kernel.shape[0], width=kernel.shape[3], in_chans=kernel.shape[2])
    q = BLOCK.format(0) + ATTN + "/query/"
    need = [q + "kernel", BLOCK.format(0) + MLP + "/Dense_0/kernel"]
    for key in need:
        if key not in t:
            raise CheckpointError(f"{path}: not a ViT checkpoint: missing key {key!r}")
    if t[q + "kernel"].ndim != 3:
        raise CheckpointError(f"{path}: {q + 'kernel'!r} has shape {tuple(t[q + 'kernel'].shape)}, "
                              "not (width, heads, head_dim)")
    cfg.update(depth=count_indexed(t, BLOCK + LN1 + "/scale"), num_heads=t[q + "kernel"].shape[1],
               mlp_dim=t[need[1]].shape[1], qkv_bias=q + "bias" in t,
               classifier="token" if "cls" in t else ("map" if MAP_HEAD + "/probe" in t else "gap"),
               representation_size=t["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in t else None,
               num_classes=t["head/kernel"].shape[1] if "head/kernel" in t else 0)
    if "conv_root/kernel" in t:  # stages and units are numbered from 1
        stages = count_indexed(t, "block{}/unit1/conv1/kernel", start=1)
        cfg.update(resnet_layers=tuple(count_indexed(t, f"block{s}/unit{{}}/conv1/kernel", start=1)
                                       for s in range(1, stages + 1)),
                   resnet_width=width_factor(t["conv_root/kernel"].shape[3]), in_chans=t["conv_root/kernel"].shape[2])
    stride = token_stride(cfg["patch_size"], cfg.get("resnet_layers"))
    if POSEMB not in t:  # big_vision's posemb="sincos2d": nothing stored, so the resolution is not known either
        cfg.update(posemb="sincos_2d", image_size=image_size_hint or 224)
        return cfg
    prefix = 1 if cfg["classifier"] == "token" else 0
    cfg["image_size"] = checkpoint_image_size(t[POSEMB].shape[1] - prefix, stride, path, POSEMB, image_size_hint)
    return cfg


def load_official_npz(path: Path, arrays: dict[str, np.ndarray] | None = None, image_size_hint=None,
                      **overrides) -> nn.Module:
    """Load an official (or big_vision) ViT .npz; the architecture comes from the arrays' names and shapes."""
    path = Path(path)
    arrays = strip_prefix(read_npz(path) if arrays is None else arrays, path)
    if is_big_vision(arrays):
        arrays = to_official_names(arrays)
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    for k, v in tensors.items():  # some old files store GroupNorm parameters as (1, 1, 1, C)
        if k.rpartition("/")[0].rpartition("/")[2].startswith("gn") and v.ndim == 4 and v.shape[:3] == (1, 1, 1):
            tensors[k] = v.reshape(-1)
    cfg = config_with_overrides(infer_config(tensors, path, image_size_hint), overrides, path)
    model = load_into_model(cfg, tensors, official_pairs(cfg), path, HINTS)
    model.label_names = None
    model.preprocessing = Preprocessing(**model_defaults(model))  # the papers' resize and x / 127.5 - 1
    return model


# ---- writing ------------------------------------------------------------------------------------------------
def check_npz_exportable(cfg: ViTConfig) -> None:
    """The official (and big_vision) layouts have no names for these; refuse rather than drop them."""
    extras = [what for what, on in (
        ("a distillation token", cfg.distill_token), ("register tokens", cfg.reg_tokens),
        ("LayerScale", cfg.layer_scale), ("fc_norm", cfg.fc_norm),
        ("a class token it does not pool", cfg.has_class_token and cfg.classifier != "token"),
        (f"{cfg.posemb} position embeddings", cfg.posemb not in ("learned_1d", "sincos_2d")),
        (f"{cfg.attention} attention", cfg.attention != "full"),
        ("shifted patch tokens", cfg.patch_embed != "linear")) if on]
    if extras:
        raise CheckpointError(f"cannot export to npz: the model has {', '.join(extras)}, which the official / "
                              "big_vision layouts cannot hold; use --to vitlab or timm")


def save_official_npz(model: nn.Module, path: str | Path) -> Path:
    """Write `model` in the official layout (loadable by the official JAX code, timm and vitlab)."""
    cfg = model.config
    check_npz_exportable(cfg)
    tensors = export_tensors(model.state_dict(), official_pairs(cfg))
    arrays = {k: v.detach().float().cpu().contiguous().numpy() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append '.npz' to the temporary name
            np.savez(f, **arrays)

    path = Path(path)
    atomic_write(path, write)
    return path
