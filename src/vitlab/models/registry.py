"""Every named model, declared as data, and `create_model`.

Names follow the paper: "ViT-B/16" is ViT-Base with 16x16 patches; "R50+ViT-B/16" is the hybrid whose
ResNet-50 stem feeds 1x1 patches; "AxialViT-B/16" is Appendix D.6's axial-attention ViT; "BiT-R50x1" is Big
Transfer's ResNet v2, the paper's CNN baseline.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

import torch
from torch import nn

from .resnet import BiTResNet
from .vit import VisionTransformer
from .vit_config import ViTConfig

# Table 1 of the paper (Ti and S from DeiT).
VIT_SIZES = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}
PATCH_SIZES = (8, 14, 16, 32)

# Section 4.1: "/16" hybrids drop ResNet-50's 4th stage and move its units into stage 3 (stride 16);
# "/32" hybrids keep all four stages (stride 32). Either way ViT sees 1x1 patches of the feature map.
HYBRID_LAYERS = {16: (3, 4, 9), 32: (3, 4, 6, 3)}

BIT_LAYERS = {"R50": (3, 4, 6, 3), "R101": (3, 4, 23, 3), "R152": (3, 8, 36, 3)}
BIT_VARIANTS = (("R50", 1), ("R50", 3), ("R101", 1), ("R101", 3), ("R152", 2), ("R152", 4))


@dataclass
class BiTConfig:
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: float = 1  # 64 x width_factor channels at the root; fractions make small CNNs for small data
    in_chans: int = 3
    num_classes: int = 1000
    image_size: int = 224

    def validate(self) -> "BiTConfig":
        if self.in_chans < 1 or self.num_classes < 0 or not self.width_factor > 0:
            raise ValueError(f"invalid BiT configuration: {self}")
        if int(64 * self.width_factor) % 32:  # every GroupNorm has 32 groups
            raise ValueError(f"BiT width_factor {self.width_factor} gives {int(64 * self.width_factor)} root "
                             "channels; it must be a multiple of 32 (GroupNorm's 32 groups)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BiTConfig":
        return cls(**{**d, "layers": tuple(d.get("layers", cls.layers))})


def _declare() -> dict[str, dict]:
    models = {}
    for size, dims in VIT_SIZES.items():
        for patch in PATCH_SIZES:
            models[f"ViT-{size}/{patch}"] = dict(patch_size=patch, **dims)
    for size in ("B", "L"):
        for stride, layers in HYBRID_LAYERS.items():
            models[f"R50+ViT-{size}/{stride}"] = dict(patch_size=1, resnet_layers=layers, **VIT_SIZES[size])
    for patch in (16, 32):  # Appendix D.6
        models[f"AxialViT-B/{patch}"] = dict(patch_size=patch, attention="axial", **VIT_SIZES["B"])
    for depth, width in BIT_VARIANTS:
        models[f"BiT-{depth}x{width}"] = dict(bit=True, layers=BIT_LAYERS[depth], width_factor=width)
    return models


MODELS: dict[str, dict] = _declare()
_BY_LOWER = {name.lower(): name for name in MODELS}


def list_models() -> list[str]:
    return list(MODELS)


def canonical_name(name: str) -> str:
    """The registered spelling of `name` (matched without regard to case), or a ValueError with suggestions."""
    key = name.strip().lower()
    for candidate in (key, key.replace("_", "/")):  # "vit-b_16" is how the official files spell it
        if candidate in _BY_LOWER:
            return _BY_LOWER[candidate]
    close = difflib.get_close_matches(key, list(_BY_LOWER), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(_BY_LOWER[c] for c in close)}?" if close else ""
    raise ValueError(f"unknown model name {name!r}{hint} (`vitlab models` lists them all)")


def model_config(name: str, **overrides) -> ViTConfig | BiTConfig:
    """The validated configuration of a named model with overrides applied; allocates nothing.

    `pool=` is accepted as another name for `classifier=` ("token", "gap" or "map")."""
    entry = dict(MODELS[canonical_name(name)])
    cls = BiTConfig if entry.pop("bit", False) else ViTConfig
    if "pool" in overrides and cls is ViTConfig:
        pool = overrides.pop("pool")
        if overrides.setdefault("classifier", pool) != pool:
            raise ValueError(f"pool={pool!r} and classifier={overrides['classifier']!r} disagree; give one of them")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        suggestions = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {s[0]!r}?)" if s else "") for k, s in suggestions.items())
        raise ValueError(f"unknown option(s) for {name}: {hints}; valid options: {sorted(valid)}")
    return cls(**{**entry, **overrides}).validate()


def build_model(cfg: ViTConfig | BiTConfig) -> nn.Module:
    if isinstance(cfg, BiTConfig):
        model = BiTResNet(cfg.layers, cfg.width_factor, cfg.in_chans, cfg.num_classes)
        model.config = cfg
        return model
    return VisionTransformer(cfg)


def create_model(name: str, **overrides) -> nn.Module:
    """A freshly initialised model by its paper name, e.g. create_model("ViT-B/16", num_classes=10)."""
    return build_model(model_config(name, **overrides))


def count_parameters(name: str, **overrides) -> int:
    """Parameter count, computed on the meta device so nothing is allocated."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters())

