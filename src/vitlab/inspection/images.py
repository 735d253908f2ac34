"""Getting images into a model for inspection: files or a data set -> pixels at the model's size -> normalised
input, by the checkpoint's preprocessing record (the evaluation transform every command uses); the same pixels
are drawn."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BadImage, DataConfig, DataError
from ..data.images import decode
from ..data.preprocessing import of_model

MAX_PIXELS = DataConfig.max_pixels  # larger images are refused as decompression bombs


def load_image_files(paths: Iterable[str | Path], model: nn.Module, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read image files as float pixels (B, C, H, W) in [0, 255] at the model's input size and channel count. A
    file that cannot be read (missing, not an image, truncated, a decompression bomb) is skipped with a warning
    naming it; when none can be read, one error names them all (and nothing is warned)."""
    images, skipped = [], []
    for path in paths:
        try:
            tensor = decode(str(path), str(path), model.config.in_chans, max_pixels)
        except BadImage as e:
            skipped.append(str(e))
            continue
        images.append(to_model_input_size(tensor, model))
    if not images:
        raise DataError("no readable image files" + (f" ({'; '.join(skipped)})" if skipped else " given"))
    for problem in skipped:
        warnings.warn(f"skipping an image that cannot be read: {problem}", stacklevel=2)
    return torch.stack(images)


def to_model_input_size(image: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 (C, H, W) cropped and resized as the model's preprocessing record says: float pixels in [0, 255],
    not rounded back to uint8, so that the model sees the tensor `predict` and `eval` give it."""
    return of_model(model).geometry(image)


def resize(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 (C, H, W) resized to `size_hw` with an antialiased bilinear filter (the paper's test-time resize)."""
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image
    x = F.interpolate(image[None].float(), size=size_hw, mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def dataset_batches(dataset, model: nn.Module, num_images: int,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """The first `num_images` of a data set of (uint8 (C, H, W), label) as pixel batches at the model's size,
    each with a caption per image (its class name where the data set has them). Undecodable images are skipped."""
    names = getattr(dataset, "class_names", None)
    images, captions = [], []
    for i, (image, label) in enumerate(itertools.islice(readable(dataset), num_images)):
        images.append(to_model_input_size(image, model))
        captions.append(names[label] if names else f"#{i} label {label}")
        if len(images) == batch_size:
            yield torch.stack(images), captions
            images, captions = [], []
    if images:
        yield torch.stack(images), captions


def readable(dataset) -> Iterator:
    """The samples of a map-style data set in order, skipping (with a warning) those that fail to decode;
    an iterable data set (shards) skips them itself."""
    if not hasattr(dataset, "__len__"):
        yield from dataset
        return
    for i in range(len(dataset)):
        try:
            yield dataset[i]
        except BadImage as e:
            warnings.warn(f"skipping an image that cannot be decoded: {e}", stacklevel=2)


def normalise(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 images to the float input the model was trained on, per its preprocessing record."""
    return of_model(model).normalise(images)
