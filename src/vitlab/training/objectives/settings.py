"""The `[objective]` table of a training config: which objective, and each objective's settings.

    [objective]
    name = "mpp"            # classification (default) | mpp | mae | distillation
    [objective.mpp]
    corrupt_rate = 0.5

Plain dataclasses (no torch), so that reading a config stays cheap; the objectives themselves are in the
sibling modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ...models.vit_config import MAXIMA, ViTConfig

NAMES = ("classification", "mpp", "mae", "distillation")
SELF_SUPERVISED = ("mpp", "mae")  # read no labels


@dataclass
class MPPConfig:
    """Masked patch prediction (the paper's Section 4.6 and Appendix B.1.2)."""

    # mean_color (1 x 2^(3C) classes) | downsized (4x4 cells, each a 3-bit colour) | pixels (L2)
    target: str = "mean_color"
    corrupt_rate: float = 0.5  # fraction of patch embeddings corrupted (each patch independently)
    replace_with_mask: float = 0.8  # of the corrupted: replaced by the learned [mask] embedding
    replace_with_random: float = 0.1  # of the corrupted: replaced by another patch's embedding from the batch
    # the rest (0.1) of the corrupted patches are kept as they are, but still predicted
    color_bits: int = 3  # levels per channel = 2 ** color_bits
    downsized_size: int = 4  # target = "downsized": the patch is averaged down to this many cells per side


@dataclass
class MAEConfig:
    """Masked autoencoder (He et al., 2021): the encoder sees the visible patches only, a light decoder
    reconstructs the masked ones."""

    mask_rate: float = 0.75  # fraction of each image's patches hidden from the encoder
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int = 2048
    norm_pix_loss: bool = True  # targets: each patch's pixels normalised by the patch's own mean and std


@dataclass
class DistillConfig:
    """DeiT distillation (objectives/distillation.py): classification with a teacher, which must be given."""

    teacher: Optional[str] = None  # any checkpoint load_pretrained reads, a `vitlab train` run directory too
    mode: str = "hard"  # hard: the teacher's argmax as a label | soft: KL to its softened distribution
    tau: float = 3.0  # soft: the temperature (DeiT's 3)
    alpha: Optional[float] = None  # weight of the teacher's term; none: DeiT's 0.5 (hard) or 0.1 (soft)

    @property
    def weight(self) -> float:
        return self.alpha if self.alpha is not None else DISTILL_ALPHA[self.mode]


DISTILL_MODES = ("hard", "soft")
DISTILL_ALPHA = {"hard": 0.5, "soft": 0.1}  # DeiT's


@dataclass
class ObjectiveConfig:
    name: str = "classification"  # classification | mpp | mae | distillation
    mpp: MPPConfig = field(default_factory=MPPConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    distillation: DistillConfig = field(default_factory=DistillConfig)


def check_distillation(cfg: DistillConfig, chosen: bool) -> list[str]:
    """Problems with `[objective.distillation]`, each naming its key (the teacher itself is checked on loading);
    `chosen`: whether it is the run's objective (which needs a teacher)."""
    problems = []
    if chosen and cfg.teacher is None:
        problems.append("objective.name = 'distillation' needs objective.distillation.teacher: the teacher's "
                        "checkpoint")
    if cfg.mode not in DISTILL_MODES:
        problems.append(f"objective.distillation.mode = {cfg.mode!r} is not one of {', '.join(DISTILL_MODES)}")
    if not cfg.tau > 0 or not math.isfinite(cfg.tau):
        problems.append(f"objective.distillation.tau must be a positive number, not {cfg.tau}")
    if cfg.alpha is not None and not 0.0 <= cfg.alpha <= 1.0:
        problems.append(f"objective.distillation.alpha must be in [0, 1], not {cfg.alpha}")
    return problems


def check(cfg: ObjectiveConfig, model_overrides: dict, architecture=None) -> list[str]:
    """Problems with the objective's settings, each naming its key (empty when it can run); `architecture`
    is the model's config when it is known before the model is built."""
    problems = []
    patch = getattr(architecture, "stride", None)  # the pixels one token sees (a BiT ResNet has no tokens)
    if cfg.name not in NAMES:
        return [f"objective.name = {cfg.name!r} is not one of {', '.join(NAMES)}"]
    if cfg.name in SELF_SUPERVISED and architecture is not None and not isinstance(architecture, ViTConfig):
        return [f"objective.name = {cfg.name!r} predicts masked patches of a ViT; this model is a "
                f"{type(architecture).__name__.removesuffix('Config')} ResNet, which has no patches"]
    if cfg.name in SELF_SUPERVISED and model_overrides.get("patch_dropout", 0.0):
        problems.append(f"objective.name = {cfg.name!r} chooses its own patches: set model.overrides.patch_dropout "
                        "to 0")
    m = cfg.mpp
    if m.target not in ("mean_color", "downsized", "pixels"):
        problems.append(f"objective.mpp.target = {m.target!r} is not one of mean_color, downsized, pixels")
    if not 0.0 < m.corrupt_rate <= 1.0:
        problems.append(f"objective.mpp.corrupt_rate must be in (0, 1], not {m.corrupt_rate}")
    if m.replace_with_mask < 0 or m.replace_with_random < 0 or m.replace_with_mask + m.replace_with_random > 1:
        problems.append("objective.mpp.replace_with_mask and replace_with_random must be >= 0 and sum to <= 1, not "
                        f"{m.replace_with_mask} and {m.replace_with_random}")
    if not 1 <= m.color_bits <= 8:
        problems.append(f"objective.mpp.color_bits must be in 1..8, not {m.color_bits}")
    if not 1 <= m.downsized_size <= MAXIMA["patch_size"]:
        problems.append(f"objective.mpp.downsized_size must be from 1 to the patch size, not {m.downsized_size:,}")
    elif cfg.name == "mpp" and m.target == "downsized" and patch is not None and patch % m.downsized_size:
        problems.append(f"objective.mpp.downsized_size {m.downsized_size} does not divide the patch size {patch}")
    whole_grid = getattr(architecture, "whole_grid_settings", [])
    if cfg.name == "mae" and whole_grid:
        problems.append(f"objective.name = 'mae' runs the encoder on a subset of the patches, which a model with "
                        f"{whole_grid[0]} cannot (it needs every patch of the grid)")
    a = cfg.mae
    if not 0.0 < a.mask_rate < 1.0:
        problems.append(f"objective.mae.mask_rate must be in (0, 1), not {a.mask_rate}")
    for key, most in (("decoder_width", MAXIMA["width"]), ("decoder_depth", MAXIMA["depth"]),
                      ("decoder_heads", MAXIMA["num_heads"]), ("decoder_mlp_dim", MAXIMA["mlp_dim"])):
        if not 1 <= getattr(a, key) <= most:
            problems.append(f"objective.mae.{key} must be from 1 to {most:,}, not {getattr(a, key):,}")
    if a.decoder_heads >= 1 and a.decoder_width % a.decoder_heads:
        problems.append(f"objective.mae.decoder_width {a.decoder_width} is not divisible by decoder_heads "
                        f"{a.decoder_heads}")
    return problems + check_distillation(cfg.distillation, cfg.name == "distillation")
