"""Evaluation batches from a data set: sharded across ranks without padding, transformed as the checkpoint's
preprocessing record says (`vitlab.data.preprocessing`: the same transform the training loader evaluates with).

Each rank takes every world_size-th sample (rank, rank + world_size, ...), so no sample is seen twice and
none is padded in; ranks may get one sample more or less, which is harmless because evaluation only sums
counts at the end. Batches carry the samples' data set indices (ImageNet ReaL and feature gathering use them).
"""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..data.errors import BadImage  # the data package's "this one file cannot be decoded" error
from ..data.preprocessing import Preprocessing, of_model

SKIPPABLE = (BadImage, OSError)


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
    def __init__(self, record: Preprocessing, raw: bool):
        self.record, self.raw = record, raw  # raw: keep pixels in [0, 255]

    def __call__(self, items):
        good = [it for it in items if it is not None]
        skipped = len(items) - len(good)
        if not good:
            return None, None, None, skipped
        images = torch.stack([self.record.geometry(img) for img, _, _ in good])
        labels = torch.tensor([lab for _, lab, _ in good], dtype=torch.long)
        indices = torch.tensor([idx for _, _, idx in good], dtype=torch.long)
        images = images if self.raw else self.record.normalise(images)
        return images, labels, indices, skipped


class EvalBatches:
    """Iterable of (images float NCHW, labels int64, data set indices int64) for this rank's shard.

    `preprocessing` (a record, or its dict from a checkpoint) is the transform; `image_size` overrides its size.
    `indices` restricts it to those samples of the data set; `raw` leaves pixels in [0, 255] (not normalised).
    """

    def __init__(self, dataset, *, preprocessing: Preprocessing | dict | None = None, image_size=None,
                 batch_size: int = 256, rank: int = 0, world_size: int = 1, num_workers: int = 0, indices=None,
                 raw: bool = False):
        record = Preprocessing.coerce(preprocessing)
        if image_size is not None:
            record = record.replace(image_size=image_size)
        if isinstance(dataset, IterableDataset):
            if indices is not None:
                raise ValueError("choosing samples by index needs a map-style data set, not a stream of shards")
            shard = _IterableShard(dataset, rank, world_size)
            self.num_samples = None
        else:
            chosen = range(len(dataset)) if indices is None else [int(i) for i in indices]
            shard = _Shard(dataset, chosen[rank::world_size])
            self.num_samples = len(shard)
        self.record = record
        self.loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                 collate_fn=_Collate(record, raw))
        self.skipped = len(getattr(dataset, "unlisted", []))  # left out by the folder scan (e.g. a named pipe)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, indices, skipped in self.loader:
            self.skipped += skipped
            if images is not None:
                yield images, labels, indices
