"""Model FLOPs by formula: multiply-adds of every matmul and convolution, times 2.

Norms, activations and softmax are left out, as `torch.utils.flop_counter.FlopCounterMode` leaves them out.
"""

from __future__ import annotations

import math
from typing import Sequence

from .registry import BiTConfig, ViTConfig
from .spt import VIEWS as SPT_VIEWS


def _resnet_macs(layers: Sequence[int], width_factor: float, in_chans: int, hw: tuple[int, int]) -> tuple[int, tuple[int, int], int]:
    """Multiply-adds of a BiT-style ResNet (root + bottleneck stages) with SAME padding.

    Returns (macs, output spatial size, output channels).
    """
    h, w = (math.ceil(s / 2) for s in hw)  # 7x7 stride-2 root conv
    width = int(64 * width_factor)
    macs = h * w * 49 * in_chans * width
    h, w = math.ceil(h / 2), math.ceil(w / 2)  # max-pool
    cin = width
    for s, depth in enumerate(layers):
        mid = width * 2**s
        for u in range(depth):
            stride = 2 if (s > 0 and u == 0) else 1
            ho, wo = math.ceil(h / stride), math.ceil(w / stride)
            macs += h * w * cin * mid  # conv1 1x1 (before the stride)
            macs += ho * wo * 9 * mid * mid  # conv2 3x3 (carries the stride)
            macs += ho * wo * mid * 4 * mid  # conv3 1x1
            if stride != 1 or cin != 4 * mid:
                macs += ho * wo * cin * 4 * mid  # projection shortcut
            h, w, cin = ho, wo, 4 * mid
    return macs, (h, w), cin


def count_flops(cfg: ViTConfig | BiTConfig, image_size: int | tuple[int, int] | None = None) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass on one image."""
    size = image_size if image_size is not None else cfg.image_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if isinstance(cfg, BiTConfig):
        macs, _, channels = _resnet_macs(cfg.layers, cfg.width_factor, cfg.in_chans, hw)
        return 2 * (macs + channels * cfg.num_classes)

    D = cfg.width
    if cfg.resnet_layers is not None:
        macs, (gh, gw), channels = _resnet_macs(cfg.resnet_layers, cfg.resnet_width, cfg.in_chans, hw)
        gh, gw = gh // cfg.patch_size, gw // cfg.patch_size
        macs += gh * gw * channels * cfg.patch_size**2 * D
    else:
        gh, gw = hw[0] // cfg.patch_size, hw[1] // cfg.patch_size
        views = SPT_VIEWS if cfg.patch_embed == "spt" else 1  # SPT projects the image and its 4 shifted copies
        macs = gh * gw * cfg.patch_size**2 * views * cfg.in_chans * D
    macs += cfg.depth * _encoder_layer_macs(cfg, gh, gw)
    macs += _head_macs(cfg, gh * gw)
    return 2 * macs


def _attention_macs(tokens: int, D: int) -> int:
    """qkv projection, q k^T, weights @ v, output projection, for one sequence."""
    return tokens * D * 3 * D + 2 * tokens * tokens * D + tokens * D * D


def _encoder_layer_macs(cfg: ViTConfig, gh: int, gw: int) -> int:
    """One layer of the paper's encoder: one block, or AxialViT's row block + column block."""
    D, M, P = cfg.width, cfg.mlp_dim, cfg.num_prefix_tokens
    T = gh * gw + P
    mlp = 2 * T * D * M
    if cfg.attention == "axial":  # every row (column) is a sequence of its own, with the prefix tokens in front
        return gh * _attention_macs(gw + P, D) + gw * _attention_macs(gh + P, D) + 2 * mlp
    macs = _attention_macs(T, D) + mlp  # LSA's mask and temperature are element-wise: no multiply-adds
    if cfg.posemb == "relative":  # queries against every offset's embedding (and the prefix tokens' one)
        macs += T * ((2 * gh - 1) * (2 * gw - 1) + (1 if P else 0)) * D
    return macs


def _head_macs(cfg: ViTConfig, num_patches: int) -> int:
    D, features = cfg.width, cfg.width
    macs = 0
    if cfg.classifier == "map":  # probe query, k/v of every patch, probe x patches, output projection, MLP
        macs += D * D + num_patches * 2 * D * D + 2 * num_patches * D + D * D + 2 * D * cfg.mlp_dim
    pooled = 2 if cfg.distill_token else 1  # DeiT: both tokens go through pre-logits, each to its head
    if cfg.representation_size:
        macs += pooled * D * cfg.representation_size
        features = cfg.representation_size
    return macs + pooled * features * cfg.num_classes


def num_tokens(cfg: ViTConfig | BiTConfig, image_size: int) -> int | None:
    """Sequence length the encoder sees at a square image size (None for a CNN)."""
    if isinstance(cfg, BiTConfig):
        return None
    return (image_size // cfg.stride) ** 2 + cfg.num_prefix_tokens
