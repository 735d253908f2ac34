"""Batched augmentations that run on the training device: Mixup, CutMix, random erasing, soft targets.

Random parameters come from a per-batch numpy Generator, so a batch is reproducible from
(seed, epoch, batch index) alone, which is what makes mid-epoch resume exact.
"""
import math

import numpy as np
import torch


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot (B, K) float targets with label smoothing: 1 - s + s/K on the label, s/K elsewhere."""
    off = smoothing / num_classes
    t = torch.full((len(labels), num_classes), off, device=labels.device)
    return t.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(rng: np.random.Generator, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box covering about 1 - lam of the image, centred uniformly, clipped to the image: y0, y1, x0, x1."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = rng.integers(height), rng.integers(width)
    return (max(cy - ch // 2, 0), min(cy + ch // 2, height), max(cx - cw // 2, 0), min(cx + cw // 2, width))


def mix(x: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, *, mixup_alpha=0.0, cutmix_alpha=0.0,
        prob=1.0, switch_prob=0.5):
    """DeiT-style batch mixing: each image with the batch's mirror image (x.flip(0)); returns x, soft targets.

    With probability `prob` the batch is mixed, by CutMix with probability `switch_prob` when both
    are on. CutMix's lam is corrected to the pasted box's true area, so targets match pixels.
    """
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return x, targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    if use_cutmix:
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
        y0, y1, x0, x1 = cutmix_box(rng, x.shape[-2], x.shape[-1], lam)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])
    else:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        x = x.mul(lam).add_(x.flip(0), alpha=1.0 - lam)
    return x, targets.mul(lam).add_(targets.flip(0), alpha=1.0 - lam)


def erase_boxes(rng: np.random.Generator, n: int, height: int, width: int, prob: float,
                area=(0.02, 1 / 3), aspect=(0.3, 3.3), attempts: int = 10) -> np.ndarray:
    """Rows of (top, left, h, w) per image; h = w = 0 where nothing is erased."""
    frac = rng.uniform(area[0], area[1], (n, attempts))
    ratio = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), (n, attempts)))
    h = np.round(np.sqrt(height * width * frac * ratio)).astype(np.int64)
    w = np.round(np.sqrt(height * width * frac / ratio)).astype(np.int64)
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    first = fits.argmax(1)
    rows = np.arange(n)
    on = fits.any(1) & (rng.random(n) < prob)
    h, w = np.where(on, h[rows, first], 0), np.where(on, w[rows, first], 0)
    u = rng.random((n, 2))
    return np.stack([(u[:, 0] * (height - h + 1)).astype(np.int64), (u[:, 1] * (width - w + 1)).astype(np.int64), h, w], 1)


def random_erase(x: torch.Tensor, rng: np.random.Generator, prob: float) -> torch.Tensor:
    """Random erasing (Zhong et al.) in "pixel" mode as DeiT uses it: a box of N(0, 1) noise per image.

    Runs on normalised images; one masked select over the batch.
    """
    b, c, height, width = x.shape
    boxes = torch.as_tensor(erase_boxes(rng, b, height, width, prob), device=x.device).view(b, 4, 1, 1)
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    top, left, h, w = boxes.unbind(1)
    mask = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    gen = torch.Generator(device=x.device).manual_seed(int(rng.integers(2**62)))
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return torch.where(mask.unsqueeze(1), noise, x)

