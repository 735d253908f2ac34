"""Explicit attention weights from a ViT, for inspection.

The model computes softmax(q k^T / sqrt(d)) explicitly only when asked (`return_attention=True`); its normal
forward keeps the fused scaled-dot-product kernel, so inspecting a model never changes how it runs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import ViTConfig
from ..runtime import autocast


def check_vit(model: nn.Module) -> ViTConfig:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ViTConfig):
        raise ValueError(f"inspection needs a Vision Transformer; got a {type(model).__name__} "
                         f"with config {type(cfg).__name__}")
    return cfg


@torch.inference_mode()
def attention_weights(model: nn.Module, x: torch.Tensor,
                      precision: str = "fp32") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits (B, classes), per layer the attention (B, heads, T, T)) for normalised input x, in eval mode; the
    forward pass autocast to `precision` (fp32, bf16, fp16), the attention returned as fp32."""
    check_vit(model)
    was_training = model.training
    model.eval()
    try:
        with autocast(x.device, precision):
            tokens, attentions = model.forward_features(x, return_attention=True)
            logits = model.forward_head(tokens)
        return logits, [a.float() for a in attentions]
    finally:
        model.train(was_training)
