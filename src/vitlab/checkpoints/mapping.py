"""What every foreign format shares: a table of (our key, their key) pairs used in both directions.

A format module describes, for a given `ViTConfig`, which of its tensors holds which of ours and how to
convert between the two layouts (`Pair`). From that one table we get:
- `export_tensors`: our state dict -> their tensors (writing a file);
- `import_tensors`: their tensors -> our state dict (reading a file);
- `load_into_model`: the expected file contents (our meta-device model exported through the table) compared
  with the file's contents key by key and shape by shape, so that every missing, unexpected or misshapen
  tensor is reported in one error before anything is loaded. A load is all or nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..models import ViTConfig, VisionTransformer
from ..models.registry import VIT_SIZES
from ..models.resnet import resnet_stride
from .errors import CheckpointError


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Pair:
    ours: str
    theirs: str
    to_theirs: Callable[[torch.Tensor], torch.Tensor] = _same
    to_ours: Callable[[torch.Tensor], torch.Tensor] = _same
    part: int = 0  # which third of our fused q|k|v tensor (dim 0) this one of theirs holds
    parts: int = 1


def renamed(ours_to_theirs: Mapping[str, str]) -> list[Pair]:
    return [Pair(o, t) for o, t in ours_to_theirs.items()]


def export_tensors(state_dict: Mapping[str, torch.Tensor], pairs: Iterable[Pair]) -> dict[str, torch.Tensor]:
    out = {}
    for p in pairs:
        t = state_dict[p.ours]
        if p.parts > 1:
            t = t.chunk(p.parts, dim=0)[p.part]
        out[p.theirs] = p.to_theirs(t)
    return out


def import_tensors(tensors: Mapping[str, torch.Tensor], pairs: Iterable[Pair]) -> dict[str, torch.Tensor]:
    pieces: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for p in pairs:
        pieces[p.ours][p.part] = p.to_ours(tensors[p.theirs])
    return {k: torch.cat([v[i] for i in sorted(v)]) if len(v) > 1 else v[0] for k, v in pieces.items()}


def check_contents(source: str | Path, found: Mapping[str, tuple], expected: Mapping[str, tuple],
                   hints: Mapping[str, str] | None = None) -> None:
    """One error listing every missing key, unexpected key and shape mismatch (file shape vs expected)."""
    def listed(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")

    problems = []
    missing = [f"{k!r} (expected shape {tuple(expected[k])})" for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k!r} has shape {tuple(found[k])} in the file, the model needs {tuple(expected[k])}"
                  for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing:
        problems.append("missing keys: " + listed(missing))
    if unexpected:
        problems.append("unexpected keys: " + listed([f"{k!r} {tuple(found[k])}" for k in unexpected]))
        problems += [why for pattern, why in (hints or {}).items() if any(pattern in k for k in unexpected)]
    if mismatched:
        problems.append("shape mismatches: " + listed(mismatched))
    if problems:
        raise CheckpointError(f"{source}: cannot load: " + "; ".join(problems) + " (nothing was loaded)")


def config_with_overrides(inferred: dict, overrides: dict, source: str | Path) -> ViTConfig:
    """The config the weights imply, with the caller's overrides on top (the caller wins)."""
    try:
        return ViTConfig.from_dict({**inferred, **overrides}).validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_into_model(cfg: ViTConfig, tensors: Mapping[str, torch.Tensor], pairs: list[Pair], source: str | Path,
                    hints: Mapping[str, str] | None = None) -> nn.Module:
    """Check the file's tensors against what `cfg` needs, then build the model and load them (all or nothing)."""
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    expected = export_tensors(model.state_dict(), pairs)
    check_contents(source, {k: tuple(v.shape) for k, v in tensors.items()},
                   {k: tuple(v.shape) for k, v in expected.items()}, hints)
    state_dict = {k: v.contiguous() for k, v in import_tensors(tensors, pairs).items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


# ---- facts several formats need -------------------------------------------------------------------------
def heads_for_width(width: int, source: str | Path) -> int:
    heads = {size["width"]: size["num_heads"] for size in VIT_SIZES.values()}  # Table 1: Ti, S, B, L, H
    if width not in heads:
        raise CheckpointError(
            f"{source}: the file does not store the number of attention heads and width {width} is not a standard "
            f"ViT width ({', '.join(f'{w}: {h}' for w, h in heads.items())}); pass num_heads=")
    return heads[width]


def checkpoint_image_size(rows: int, stride: int, source: str | Path, key: str, hint=None):
    """The resolution a position-embedding table of `rows` patch rows was trained at: a square grid, or the
    caller's `image_size` when its grid has exactly that many rows (the only way to know a non-square one)."""
    if hint is not None:
        h, w = (hint, hint) if isinstance(hint, int) else hint
        if (h // stride) * (w // stride) == rows:
            return hint if isinstance(hint, int) else (int(h), int(w))
    side = int(round(rows ** 0.5))
    if side * side != rows:
        raise CheckpointError(f"{source}: {key!r} has {rows} patch rows, which is not a square grid; pass "
                              "image_size=(height, width) of the resolution it was trained at")
    return side * stride


def width_factor(root_channels: int) -> int | float:
    """The ResNet width factor from the root conv's output channels (the official `width = int(64 * factor)`)."""
    return root_channels // 64 if root_channels % 64 == 0 else root_channels / 64


def token_stride(patch_size: int, resnet_layers: tuple | None) -> int:
    """Input pixels per token side: the patch, times the ResNet's stride for a hybrid (zero stages included)."""
    return patch_size if resnet_layers is None else patch_size * resnet_stride(resnet_layers)


def is_square(n: int) -> bool:
    return int(round(n ** 0.5)) ** 2 == n


def add_class_slot(posemb: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """Zero rows for the [class] (and distillation) token in front of a table that has none (big_vision, timm's
    no_embed_class): adding zero to those tokens is what those codes do by adding nothing."""
    return torch.cat([posemb.new_zeros(1, rows, posemb.shape[2]), posemb], dim=1)


def count_indexed(keys: Iterable[str], template: str, start: int = 0) -> int:
    """How many consecutive i from `start` give a key `template.format(i)` present in `keys`."""
    keys = set(keys)
    n = 0
    while template.format(start + n) in keys:
        n += 1
    return n


def as_float32(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
