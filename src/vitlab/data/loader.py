"""The loader: batches of (normalised float images, targets) on the training device.

Three paths, one behaviour:
- in-memory data sets (Fashion-MNIST, CIFAR) without RandAugment: uint8 batches are gathered
  in the main process and cropped / flipped / resized as one batched op on the device;
- files (image folders), or RandAugment on anything: decode + crop + resize per image in
  DataLoader worker processes on uint8, then batched float ops on the device;
- .tar shards: streamed by the workers (see shards.py).

Everything random is drawn from generators keyed by (seed, epoch, rank, position), never from
global state, so a batch does not depend on the number of workers, and `load_state_dict` resumes
mid-epoch with exactly the batch that would have come next.
"""
import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import augment
from .arrays import ArrayDataset, match_channels
from .config import DataConfig
from .errors import BadImage, DataError
from .randaugment import RandAugment
from .shards import ShardDataset, ShardStream, batch_record
from .preprocessing import EvalImage, from_data_config
from .transforms import CropResize, crop_flip_batch, sample_crop_boxes

log = logging.getLogger(__name__)
MAX_RETRIES = 50  # replacement draws for an unreadable training image before giving up


class SampleSource(Dataset):
    """Map-style view for DataLoader workers: (index, position) -> (uint8 image or None, label, bad files)."""

    def __init__(self, dataset, transform, key: tuple, train: bool):
        self.dataset, self.transform, self.key, self.train = dataset, transform, key, train

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, position = item
        rng = np.random.default_rng(self.key + (position,))
        bad, j = [], index
        for _ in range(MAX_RETRIES):
            name = self.dataset.sample_name(j)
            try:
                return self.transform(self.dataset.open(j), rng, name), int(self.dataset.labels[j]), bad
            except BadImage as e:
                bad.append((e.name, e.reason))
            if not self.train:  # evaluation never substitutes: the sample is dropped and reported
                return None, -1, bad
            j = int(rng.integers(len(self.dataset)))  # a random stand-in: bad files often cluster
        raise DataError(f"{MAX_RETRIES} unreadable images in a row, e.g. {bad[-1][0]}: {bad[-1][1]}")


def collate(items) -> dict:
    bad = [b for _, _, bs in items for b in bs]
    kept = [(x, y) for x, y, _ in items if x is not None]
    return batch_record([x for x, _ in kept], [y for _, y in kept], bad)


class Loader:
    """Iterating yields the rest of the current epoch; the next iteration starts the next epoch."""

    def __init__(self, dataset, cfg: DataConfig, *, train: bool, rank=0, world_size=1, device="cpu",
                 batch_size=None, seed=None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset, self.cfg, self.train = dataset, cfg, train
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.batch_size = batch_size or cfg.batch_size // world_size
        if self.batch_size < 1:
            raise DataError(f"data.batch_size = {cfg.batch_size} gives no samples per rank for world_size={world_size}")
        self.seed = cfg.seed if seed is None else seed
        self.streamed = isinstance(dataset, ShardDataset)
        use_randaugment = train and cfg.randaugment_n > 0
        self.batched = isinstance(dataset, ArrayDataset) and not use_randaugment
        self.record = from_data_config(cfg)  # evaluation: the transform saved with checkpoints, used by commands
        self.transform = EvalImage(self.record) if not train else CropResize(
            cfg.image_size, cfg.in_chans, inception_crop=cfg.inception_crop, area=cfg.crop_area,
            aspect=cfg.crop_aspect, flip=cfg.flip, resize_crop=cfg.resize_crop, crop_fraction=cfg.crop_fraction,
            randaugment=RandAugment(cfg.randaugment_n, cfg.randaugment_m, cfg.randaugment_mstd) if use_randaugment else None)
        self.num_roles = max(1, cfg.num_workers)
        self.epoch, self.batch, self.skipped, self.bad_files = 0, 0, 0, []
        self._note_bad(getattr(dataset, "unlisted", []))  # left out by the scan (e.g. a named pipe)
        self._reset_roles()
        self._device_images = None
        if not self.streamed and len(self) == 0:
            raise DataError(f"{len(self.rank_indices(0))} samples for rank {rank} make no batch of {self.batch_size} "
                            f"(train drops the last partial batch); lower data.batch_size")

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    def __len__(self) -> int:
        """Batches per epoch for this rank (for shards, an estimate from sizes.json)."""
        if self.streamed:
            n = self.dataset.num_samples
            if n is None:
                raise TypeError("len() of a shards loader needs sizes.json next to the shards; train by steps instead")
            n //= self.world_size
        else:
            n = len(self.rank_indices(0))
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for the epoch.

        Training: a seeded shuffle cut into global batches, of which each rank takes its own slice, so that
        N processes see the same global batches as one. Evaluation: a strided, uneven, padding-free share in
        dataset order.
        """
        n = len(self.dataset)
        if not self.train:
            return np.arange(self.rank, n, self.world_size)
        order = np.random.default_rng((self.seed, epoch)).permutation(n)
        global_batch = self.batch_size * self.world_size
        steps = n // global_batch
        return order[: steps * global_batch].reshape(steps, self.world_size, self.batch_size)[:, self.rank].reshape(-1)

    # ---- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "skipped": self.skipped,
                "bad_files": list(self.bad_files), "num_roles": self.num_roles, "consumed": list(self.consumed),
                "last_role": self.last_role, "done_roles": sorted(self.done_roles),
                "dataset_size": None if self.streamed else len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        size = None if self.streamed else len(self.dataset)
        if state.get("dataset_size") != size:
            raise DataError(f"loader state is for a data set of {state.get('dataset_size')} samples, this one has {size}")
        if self.streamed and state["num_roles"] != self.num_roles and (state["batch"] or state["consumed"]):
            raise DataError(f"a shards loader resumes mid-epoch only with the same num_workers "
                            f"({max(state['num_roles'], 1)}), not {self.cfg.num_workers}")
        self.epoch, self.batch, self.seed = state["epoch"], state["batch"], state["seed"]
        self.skipped, self.bad_files = state["skipped"], list(state["bad_files"])
        self.consumed, self.last_role = list(state["consumed"]), state["last_role"]
        self.done_roles = set(state["done_roles"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0
        self._reset_roles()

    def _reset_roles(self):
        self.consumed, self.last_role, self.done_roles = [0] * self.num_roles, -1, set()

    # ---- iteration -----------------------------------------------------------------------------
    def __iter__(self):
        if not self.streamed and self.batch >= len(self):  # an epoch finished before a checkpoint
            self.set_epoch(self.epoch + 1)
        if self.streamed:
            yield from self._iter_shards()
        elif self.batched:
            yield from self._iter_in_memory()
        else:
            yield from self._iter_files()
        self.set_epoch(self.epoch + 1)

    def _key(self, *more) -> tuple:
        return (self.seed, self.epoch, self.rank) + more

    def _iter_in_memory(self):
        ds, cfg, size = self.dataset, self.cfg, self.cfg.image_size
        if self._device_images is None:  # whole data set on the device once: Fashion-MNIST is 47 MB
            self._device_images = ds.images.to(self.device)
        images = self._device_images
        height, width = images.shape[-2:]
        indices = self.rank_indices(self.epoch)
        for b in range(self.batch, len(self)):
            sel = indices[b * self.batch_size : (b + 1) * self.batch_size]
            rng = np.random.default_rng(self._key(b))
            x = images[torch.as_tensor(sel, device=self.device)]
            if self.train:
                x = x.float()
                if cfg.inception_crop:
                    boxes = sample_crop_boxes(rng, len(sel), height, width, cfg.crop_area, cfg.crop_aspect)
                else:
                    boxes = np.tile([0, 0, height, width], (len(sel), 1))
                flips = rng.random(len(sel)) < 0.5 if cfg.flip else np.zeros(len(sel), bool)
                x = match_channels(crop_flip_batch(x, torch.as_tensor(boxes), torch.as_tensor(flips), size),
                                   cfg.in_chans)
            else:  # as every command evaluates: channels, then the record's crop and resize
                x = self.record.geometry(match_channels(x, cfg.in_chans))
            self.batch = b + 1
            yield self._finish(x, ds.labels[torch.as_tensor(sel)], rng)

    def _data_loader(self, dataset, **kw) -> DataLoader:
        workers = self.cfg.num_workers
        # a private generator keeps the DataLoader from drawing on torch's global RNG (which drives dropout)
        return DataLoader(dataset, num_workers=workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None, generator=torch.Generator(), **kw)

    def _iter_files(self):
        indices = self.rank_indices(self.epoch)
        B = self.batch_size
        batches = [[(int(i), b * B + k) for k, i in enumerate(indices[b * B : (b + 1) * B])]
                   for b in range(self.batch, len(self))]
        source = SampleSource(self.dataset, self.transform, self._key(), self.train)
        for record in self._data_loader(source, batch_sampler=batches, collate_fn=collate):
            self._note_bad(record["bad"])
            b = self.batch
            self.batch += 1
            if record["images"] is None:  # evaluation batch whose every file was unreadable
                continue
            yield self._finish(record["images"], record["labels"], np.random.default_rng(self._key(b)))

    def _iter_shards(self):
        n = self.num_roles
        start = (self.last_role + 1) % n
        active = [r % n for r in range(start, start + n) if r % n not in self.done_roles]
        plan = {"seed": self.seed, "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size,
                "train": self.train, "batch_size": self.batch_size, "shuffle_buffer": self.cfg.shuffle_buffer,
                "transform": self.transform, "roles": active + [-1] * (n - len(active)), "skip": list(self.consumed)}
        if len(self.dataset.urls) < self.world_size:
            raise DataError(f"{len(self.dataset.urls)} shards cannot feed {self.world_size} ranks")
        for record in self._data_loader(ShardStream(self.dataset, plan), batch_size=None):
            role = record["role"]
            r = (self.last_role + 1) % n
            while r != role:  # DataLoader goes round the workers; one passed over has run dry
                self.done_roles.add(r)
                r = (r + 1) % n
            self.last_role, self.consumed[role] = role, record["consumed"]
            self._note_bad(record["bad"])
            if record["images"] is None:
                continue
            b = self.batch
            self.batch += 1
            yield self._finish(record["images"], record["labels"], np.random.default_rng(self._key(b)))

    def summary(self) -> str:
        """One line for the run's log: how many unreadable images were skipped, and which."""
        if not self.skipped:
            return "no unreadable images"
        names = ", ".join(self.bad_files[:5]) + (", ..." if len(self.bad_files) > 5 else "")
        return f"skipped {self.skipped} unreadable image reads ({len(self.bad_files)} files: {names})"

    def _note_bad(self, bad):
        for name, reason in bad:
            log.warning("skipped unreadable image %s: %s", name, reason)
            self.skipped += 1
            if name not in self.bad_files:
                self.bad_files.append(name)

    def _finish(self, x: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator):
        """Device side: float, normalise, then (training) random erasing, soft targets, Mixup/CutMix."""
        cfg = self.cfg
        x = self.record.normalise(x.to(self.device, non_blocking=True))
        y = labels.to(self.device, non_blocking=True)
        if not self.train:
            return x, y
        if cfg.random_erasing > 0:
            x = augment.random_erase(x, rng, cfg.random_erasing)
        if cfg.soft_targets:
            y = augment.soft_targets(y, self.num_classes, cfg.label_smoothing)
            x, y = augment.mix(x, y, rng, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                               prob=cfg.mix_prob, switch_prob=cfg.mix_switch_prob)
        return x, y


def build_loader(cfg: DataConfig, split: str, *, train: bool, rank: int = 0, world_size: int = 1, device="cpu",
                 epoch_seed: int | None = None, batch_size: int | None = None, dataset=None) -> Loader:
    """Loader for `split` (a split spec, usually cfg.train_split or cfg.eval_split).

    batch_size: per-rank micro-batch (default cfg.batch_size // world_size). epoch_seed: overrides
    cfg.seed for shuffling and augmentation. dataset: reuse an already built data set.
    """
    from .sources import build_dataset

    cfg.validate()
    if dataset is None:
        dataset = build_dataset(cfg.dataset, split, root=cfg.root, in_chans=cfg.in_chans, split_seed=cfg.split_seed,
                                download=cfg.download, max_pixels=cfg.max_pixels,
                                max_member_bytes=cfg.max_member_bytes)
    return Loader(dataset, cfg, train=train, rank=rank, world_size=world_size, device=device,
                  batch_size=batch_size, seed=epoch_seed)
