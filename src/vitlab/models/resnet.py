"""BiT-style ResNets: weight-standardised convolutions, GroupNorm, TF "SAME" padding.

Two ResNets are built from these parts:
- `HybridStem`, the official R50+ViT hybrid's backbone: a root block, then post-activation
  bottleneck units (conv-GN-ReLU), whose last feature map ViT embeds with 1x1 patches.
- `BiTResNet`, the pre-activation ResNet v2 of Big Transfer (BiT), the paper's CNN baseline.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad like TensorFlow's "SAME": output = ceil(input / stride), extra pixel at the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class StdConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel: (w - mean) / (std + eps), biased std.

    With eps_in_sqrt, (w - mean) / sqrt(var + eps) instead: timm's form, for its checkpoints.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, eps: float = 1e-5,
                 eps_in_sqrt: bool = False):
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, padding=0, bias=False)
        self.eps = eps
        self.eps_in_sqrt = eps_in_sqrt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / (torch.sqrt(var + self.eps) if self.eps_in_sqrt else var.sqrt() + self.eps)
        x = same_padding(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, None, self.stride)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-2 max-pool with "SAME" padding (padded with -inf, as TF does)."""
    return F.max_pool2d(same_padding(x, 3, 2, value=float("-inf")), 3, 2)


class RootBlock(nn.Module):
    """7x7 stride-2 standardised conv (+ GroupNorm + ReLU in the post-activation form), 3x3 max-pool."""

    def __init__(self, in_chans: int, width: int, post_activation: bool):
        super().__init__()
        self.conv = StdConv2d(in_chans, width, 7, stride=2)
        self.norm = group_norm(width) if post_activation else nn.Identity()
        self.post_activation = post_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if self.post_activation:
            x = F.relu(x)
        return max_pool_same(x)


class Bottleneck(nn.Module):
    """Post-activation bottleneck unit of the official hybrid: conv-GN-ReLU x3, residual, ReLU."""

    def __init__(self, in_chans: int, mid_chans: int, stride: int):
        super().__init__()
        out_chans = 4 * mid_chans
        self.conv1, self.norm1 = StdConv2d(in_chans, mid_chans, 1), group_norm(mid_chans)
        self.conv2, self.norm2 = StdConv2d(mid_chans, mid_chans, 3, stride), group_norm(mid_chans)
        self.conv3, self.norm3 = StdConv2d(mid_chans, out_chans, 1), group_norm(out_chans)
        nn.init.zeros_(self.norm3.weight)  # each unit starts as the identity on its residual path
        self.downsample = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(StdConv2d(in_chans, out_chans, 1, stride), group_norm(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + shortcut)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit of ResNet v2 / BiT: (GN-ReLU-conv) x3 plus the shortcut."""

    def __init__(self, in_chans: int, mid_chans: int, stride: int):
        super().__init__()
        out_chans = 4 * mid_chans
        self.norm1, self.conv1 = group_norm(in_chans), StdConv2d(in_chans, mid_chans, 1)
        self.norm2, self.conv2 = group_norm(mid_chans), StdConv2d(mid_chans, mid_chans, 3, stride)
        self.norm3, self.conv3 = group_norm(mid_chans), StdConv2d(mid_chans, out_chans, 1)
        self.downsample = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = StdConv2d(in_chans, out_chans, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = F.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        y = self.conv1(x_preact)
        y = self.conv2(F.relu(self.norm2(y)))
        y = self.conv3(F.relu(self.norm3(y)))
        return y + shortcut


def make_stages(unit: type, layers: Sequence[int], width: int) -> nn.Sequential:
    """Stages of bottleneck units; stage s has width*2^s middle channels and stride 2 from stage 2 on."""
    stages, in_chans = [], width
    for s, depth in enumerate(layers):
        mid = width * 2**s
        units = [unit(in_chans if u == 0 else 4 * mid, mid, (1 if s == 0 else 2) if u == 0 else 1) for u in range(depth)]
        stages.append(nn.Sequential(*units))
        in_chans = 4 * mid
    return nn.Sequential(*stages)


def resnet_stride(layers: Sequence[int]) -> int:
    """Root conv (2) x max-pool (2) x one stride-2 stage per stage after the first (zero stages: the root alone)."""
    return 4 * 2 ** max(len(layers) - 1, 0)


def root_width(width_factor: float) -> int:
    """The official code's `int(64 * width_factor)`: any factor, whole or not (0.5 -> 32 channels)."""
    width = int(64 * width_factor)
    if width < 32 or width % 32:
        raise ValueError(f"ResNet width factor {width_factor} gives {width} root channels; GroupNorm(32) needs a "
                         "positive multiple of 32")
    return width


def stages_out_chans(layers: Sequence[int], width: int) -> int:
    """Channels of the last feature map: the root's width with no stages, else 4 x the last stage's middle."""
    return 4 * width * 2 ** (len(layers) - 1) if len(layers) else width


class HybridStem(nn.Module):
    """The R50 of the official R50+ViT hybrid, up to its last stage's feature map."""

    def __init__(self, layers: Sequence[int], width_factor: float = 1, in_chans: int = 3,
                 ws_eps: float = 1e-5, gn_eps: float = 1e-6, ws_eps_in_sqrt: bool = False):
        super().__init__()
        width = root_width(width_factor)
        self.root = RootBlock(in_chans, width, post_activation=True)
        self.stages = make_stages(Bottleneck, layers, width)
        for m in self.modules():  # checkpoints from other code (timm) were trained with other epsilons
            if isinstance(m, StdConv2d):
                m.eps, m.eps_in_sqrt = ws_eps, ws_eps_in_sqrt
            elif isinstance(m, nn.GroupNorm):
                m.eps = gn_eps
        self.out_chans = stages_out_chans(layers, width)
        self.stride = resnet_stride(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.root(x))


class BiTResNet(nn.Module):
    """BiT's ResNet v2 classifier (pre-activation, GroupNorm, weight standardisation)."""

    def __init__(self, layers: Sequence[int], width_factor: float = 1, in_chans: int = 3, num_classes: int = 1000, **_):
        super().__init__()
        width = root_width(width_factor)
        self.root = RootBlock(in_chans, width, post_activation=False)
        self.stages = make_stages(PreActBottleneck, layers, width)
        self.num_features = stages_out_chans(layers, width)
        self.norm = group_norm(self.num_features)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final normalised feature map, (B, C, H, W)."""
        return F.relu(self.norm(self.stages(self.root(x))))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
