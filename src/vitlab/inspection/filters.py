"""Principal components of the patch-embedding filters (the paper's Figure 7, left).

The embedding E maps each flattened P x P x C patch to width D: D filters of P x P x C. Their top principal
components (of the D filters as points, mean removed) are plausible basis functions for a patch's fine
structure; shown as RGB images (grey for one-channel models). With shifted patch tokens (models/spt.py) a
token reads the pixels within P/2 of its patch too, so its filters are (P + 2 (P // 2)) wide.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .attention import check_vit


def principal_filters(weight: torch.Tensor, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Top `count` principal components of conv filters (D, C, P, P): ((k, C, P, P), explained variance ratio (k,)).

    k = min(count, C * P * P, D - 1) (D centred filters span at most D - 1 directions). Components are unit
    vectors; their sign is arbitrary, as in any PCA.
    """
    w = np.asarray(torch.as_tensor(weight).detach().cpu(), dtype=np.float64)
    x = w.reshape(w.shape[0], -1)
    x = x - x.mean(axis=0, keepdims=True)
    d, size = x.shape
    k = min(count, size, max(d - 1, 1))
    # eigh of the smaller of the two Gram matrices: far faster than an SVD at ViT sizes
    if size <= d:
        variance, vectors = np.linalg.eigh(x.T @ x)
        components = vectors[:, ::-1][:, :k].T
    else:
        variance, vectors = np.linalg.eigh(x @ x.T)
        components = (x.T @ vectors[:, ::-1][:, :k]).T
        components /= np.linalg.norm(components, axis=1, keepdims=True).clip(1e-30)
    variance = np.clip(variance[::-1], 0, None)
    ratio = variance[:k] / max(variance.sum(), 1e-30)
    return components.reshape(k, *w.shape[1:]), ratio


def embedding_filters(model: nn.Module, count: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """The principal components of a ViT's patch-embedding filters; see `principal_filters`."""
    cfg = check_vit(model)
    if cfg.resnet_layers is not None:
        raise ValueError("a hybrid ViT embeds 1x1 cells of its ResNet feature map, so its embedding filters have "
                         "no image-space picture (there is no RGB patch to show)")
    return principal_filters(model.patch_embed.image_filters(), count)
