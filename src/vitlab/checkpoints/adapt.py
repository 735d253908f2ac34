"""Adapting a loaded model: a new patch size (FlexiViT), a new resolution, a new head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ViTConfig
from .errors import CheckpointError


def adapt_model(model: nn.Module, *, num_classes: int | None = None, image_size=None,
                posemb_method: str = "official", keep_pre_logits: bool = False,
                patch_size: int | None = None) -> nn.Module:
    cfg = model.config
    if patch_size is not None and patch_size != getattr(cfg, "patch_size", patch_size):
        set_patch_size(model, patch_size)
    if image_size is not None and isinstance(cfg, ViTConfig):
        try:
            set_image_size(model, image_size, posemb_method)
        except ValueError as e:  # a size the patch size does not divide
            raise CheckpointError(f"image_size={image_size}: {e}") from None
    elif image_size is not None:
        cfg.image_size = image_size
    if num_classes is not None and num_classes != cfg.num_classes:
        if not keep_pre_logits:
            drop_pre_logits(model)
        replace_head(model, num_classes)
    return model


def reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    """The paper's fine-tuning head, always fresh: the pre-training hidden layer (pre-logits) dropped and a
    zero-initialised linear layer for `num_classes` (the one rule of `vitlab train` and `vitlab vtab`)."""
    drop_pre_logits(model)
    replace_head(model, num_classes)
    return model


def drop_pre_logits(model: nn.Module) -> None:
    """The paper drops the pre-training head's hidden layer when fine-tuning."""
    cfg = model.config
    if isinstance(cfg, ViTConfig) and model.pre_logits is not None:
        model.pre_logits = None
        model.num_features = cfg.width
        cfg.representation_size = None


def set_image_size(model: nn.Module, image_size, method: str = "official") -> None:
    """Resample the learned position embeddings (of whichever variant) to the patch grid of `image_size`."""
    model.set_image_size(image_size, method)


def replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    features = model.num_features
    model.head = nn.Linear(features, num_classes) if num_classes else nn.Identity()
    if num_classes:
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    model.num_classes = model.config.num_classes = num_classes


# ---- FlexiViT (Beyer et al. 2023): running a model at another patch size ------------------------------------
def resize_matrix(old: int, new: int) -> torch.Tensor:
    """B, (new*new, old*old): the bilinear resize of an old x old patch to new x new, as a matrix (float64)."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", align_corners=False, antialias=new < old)
    return resized.reshape(old * old, new * new).T


def pinv_resize_kernel(kernel: torch.Tensor, new: int) -> torch.Tensor:
    """w' = pinv(B^T) w for every (output, input) channel pair, so that <x, w> = <Bx, w'> for every patch x
    (exactly when upsampling; the least-squares best when downsampling)."""
    d, c, old, _ = kernel.shape
    b = resize_matrix(old, new)
    flat = kernel.detach().to(torch.float64).reshape(d * c, old * old)
    return (flat @ torch.linalg.pinv(b.T).T).reshape(d, c, new, new).to(kernel.dtype)


def bilinear_resize_kernel(kernel: torch.Tensor, new: int) -> torch.Tensor:
    """Plain interpolation of the kernel, scaled by the area ratio (what FlexiViT compares against)."""
    old = kernel.shape[-1]
    resized = F.interpolate(kernel.detach().to(torch.float64), size=(new, new), mode="bilinear", align_corners=False,
                            antialias=new < old)
    return (resized * (old / new) ** 2).to(kernel.dtype)


KERNEL_RESIZES = {"pinv": pinv_resize_kernel, "bilinear": bilinear_resize_kernel}


def set_patch_size(model: nn.Module, patch_size: int, method: str = "pinv") -> None:
    """Run `model` at `patch_size`: the patch-embedding kernel resized, the token grid (and so the position
    embeddings) kept, the image size scaled with the patch: image_size = grid x patch_size."""
    cfg = model.config
    if not isinstance(cfg, ViTConfig) or cfg.resnet_layers is not None:
        raise CheckpointError("patch_size= needs a plain ViT (a hybrid embeds 1x1 patches of its ResNet's feature map)")
    if cfg.patch_embed != "linear":
        raise CheckpointError(f"patch_size= needs the linear patch embedding, not patch_embed {cfg.patch_embed!r} "
                              "(its LayerNorm over each patch's shifted views has no resized counterpart)")
    if method not in KERNEL_RESIZES:
        raise CheckpointError(f"unknown kernel resize {method!r}; expected one of {sorted(KERNEL_RESIZES)}")
    old_proj = model.patch_embed.proj
    proj = nn.Conv2d(old_proj.in_channels, old_proj.out_channels, patch_size, stride=patch_size,
                     bias=old_proj.bias is not None)
    with torch.no_grad():
        proj.weight.copy_(KERNEL_RESIZES[method](old_proj.weight, patch_size))
        if old_proj.bias is not None:
            proj.bias.copy_(old_proj.bias)
    gh, gw = cfg.grid_size
    model.patch_embed.proj = proj.to(old_proj.weight.device)
    cfg.patch_size = patch_size
    cfg.image_size = gh * patch_size if gh == gw else (gh * patch_size, gw * patch_size)
