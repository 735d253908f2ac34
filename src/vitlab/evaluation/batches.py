"""Evaluation batches from a data set: sharded across ranks without padding, resized and normalised.

Each rank takes every world_size-th sample (rank, rank + world_size, ...), so no sample is seen twice and
none is padded in; ranks may get one sample more or less, which is harmless because evaluation only sums
counts at the end. Batches carry the samples' data set indices (ImageNet ReaL and feature gathering use them).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..data.errors import BadImage  # the data package's "this one file cannot be decoded" error
from ..checkpoints.mapping import CheckpointError

SKIPPABLE = (BadImage, OSError)


def model_image_size(model) -> tuple[int, int]:
    size = model.config.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def model_preprocessing(model) -> dict:
    """How the checkpoint expects pixels normalised; the paper's x / 127.5 - 1 when it does not say."""
    return getattr(model, "preprocessing", None) or {"normalisation": "minus_one_one"}


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 or float C x H x W to float C x size, antialiased bilinear (Pillow's filter)."""
    image = image.float()
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def normalise(x: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """Pixels in [0, 255] to the model's input range, as the checkpoint's `preprocessing` says."""
    kind = preprocessing.get("normalisation", preprocessing.get("normalize", "minus_one_one"))
    if kind == "minus_one_one":
        return x / 127.5 - 1.0
    if kind == "mean_std":
        mean = torch.tensor(preprocessing["mean"], dtype=x.dtype, device=x.device).view(-1, 1, 1) * 255
        std = torch.tensor(preprocessing["std"], dtype=x.dtype, device=x.device).view(-1, 1, 1) * 255
        return (x - mean) / std
    raise CheckpointError(f"unknown normalisation {kind!r} in the checkpoint's preprocessing {preprocessing}")


class _Shard(Dataset):
    """Samples rank, rank + world_size, ... of a map-style data set, as (image, label, index) or None if bad."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        try:
            image, label = self.dataset[index]
        except SKIPPABLE as e:
            warnings.warn(f"skipping sample {index}: {e}")
            return None
        return image, int(label), index


class _IterableShard(IterableDataset):
    """Every world_size-th sample of a streamed data set (each DataLoader worker a share of those); indices count
    samples in stream order. A sample that cannot be decoded comes out as None, so the collate counts it."""

    def __init__(self, dataset, rank, world_size):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        slots, mine = self.world_size * workers, self.rank * workers + worker
        for index, sample in self.dataset.records(wanted=lambda i: i % slots == mine):
            yield None if sample is None else (sample[0], int(sample[1]), index)


class _Collate:
    def __init__(self, size, preprocessing):
        self.size, self.preprocessing = size, preprocessing  # preprocessing None: keep pixels in [0, 255]

    def __call__(self, items):
        good = [it for it in items if it is not None]
        skipped = len(items) - len(good)
        if not good:
            return None, None, None, skipped
        images = torch.stack([resize(img, self.size) for img, _, _ in good])
        labels = torch.tensor([lab for _, lab, _ in good], dtype=torch.long)
        indices = torch.tensor([idx for _, _, idx in good], dtype=torch.long)
        images = images if self.preprocessing is None else normalise(images, self.preprocessing)
        return images, labels, indices, skipped


class EvalBatches:
    """Iterable of (images float NCHW, labels int64, data set indices int64) for this rank's shard.

    `indices` restricts it to those samples of the data set; `raw` leaves pixels in [0, 255] (not normalised).
    """

    def __init__(self, dataset, *, image_size, batch_size: int = 256, preprocessing: dict | None = None,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, indices=None, raw: bool = False):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if isinstance(dataset, IterableDataset):
            if indices is not None:
                raise ValueError("choosing samples by index needs a map-style data set, not a stream of shards")
            shard = _IterableShard(dataset, rank, world_size)
            self.num_samples = None
        else:
            chosen = range(len(dataset)) if indices is None else [int(i) for i in indices]
            shard = _Shard(dataset, chosen[rank::world_size])
            self.num_samples = len(shard)
        preprocessing = None if raw else preprocessing or {"normalisation": "minus_one_one"}
        self.loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                 collate_fn=_Collate(size, preprocessing))
        self.skipped = len(getattr(dataset, "unlisted", []))  # left out by the folder scan (e.g. a named pipe)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, indices, skipped in self.loader:
            self.skipped += skipped
            if images is not None:
                yield images, labels, indices
