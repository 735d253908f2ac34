"""Principal components of the patch-embedding filters (the paper's Figure 7, left).

The embedding E maps each flattened P x P x C patch to width D: D filters of P x P x C. Their top principal
components (of the D filters as points, mean removed) are plausible basis functions for a patch's fine
structure; shown as RGB images (grey for one-channel models).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .attention import check_vit


def principal_filters(weight: torch.Tensor, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Top `count` principal components of conv filters (D, C, P, P): ((k, C, P, P), explained variance ratio (k,)).

    k = min(count, D, C * P * P). Components are unit vectors; their sign is arbitrary, as in any PCA.
    """
    w = torch.as_tensor(weight, dtype=torch.float64).detach().cpu()
    flat = w.reshape(w.shape[0], -1)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vt = torch.linalg.svd(flat, full_matrices=False)
    k = min(count, vt.shape[0])
    variance = s**2
    ratio = variance[:k] / variance.sum().clamp_min(1e-30)
    return vt[:k].reshape(k, *w.shape[1:]).numpy(), ratio.numpy()


def embedding_filters(model: nn.Module, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """The principal components of a ViT's patch-embedding filters; see `principal_filters`."""
    cfg = check_vit(model)
    if cfg.resnet_layers is not None:
        raise ValueError("a hybrid ViT embeds 1x1 cells of its ResNet feature map, so its embedding filters have "
                         "no image-space picture (there is no RGB patch to show)")
    return principal_filters(model.patch_embed.proj.weight, count)
