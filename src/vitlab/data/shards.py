"""WebDataset-style .tar shards, streamed: nothing is read whole.

A sample is the group of consecutive tar members sharing a key (the file name up to its first
dot): an image (.jpg/.jpeg/.png/.webp/.bmp) and an integer label (.cls). Next to the shards:
`classes.txt` (one class name per line; required) and optionally `sizes.json`
({"shard.tar": n_samples}, as open_clip writes it) so the loader can report len().

Shards are dealt out to ranks, then to loader workers ("roles"); each role streams its shards in
order through a seeded shuffle buffer. `train[:98%]` / `train[98%:]` split by a hash of the key.
"""
import io
import json
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .errors import BadImage, DataError
from .images import IMAGE_EXTENSIONS, decode, open_image
from .splits import Split, key_fraction, split_text

log = logging.getLogger(__name__)
MAX_MEMBER_BYTES = 64 * 2**20  # far above any real image; DataConfig.max_member_bytes changes it


def expand_braces(pattern: str) -> list[str]:
    """"a-{000..002}.tar" -> a-000.tar, a-001.tar, a-002.tar; "{x,y}" lists alternatives."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = r.groups()
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for o in options for p in expand_braces(head + o + tail)]


class Oversized:
    """Stands in for a member larger than max_member_bytes, which is never read (a sparse member of a 10 KB tar
    can claim gigabytes)."""

    def __init__(self, name: str, size: int, limit: int):
        self.reason = f"member {name} claims {size} bytes, over data.max_member_bytes = {limit}"


def tar_samples(url: str, max_member_bytes: int = MAX_MEMBER_BYTES):
    """Yield (key, {ext: bytes or Oversized}) for the consecutive member groups of one tar file, streaming."""
    key, parts = None, {}
    with tarfile.open(url, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            k = f"{directory}/{stem}" if directory else stem
            if k != key and parts:
                yield key, parts
                parts = {}
            key = k
            if member.size > max_member_bytes:
                parts[ext.lower()] = Oversized(member.name, member.size, max_member_bytes)
            else:
                parts[ext.lower()] = tar.extractfile(member).read()
    if parts:
        yield key, parts


def sample_problem(parts: dict) -> str | None:
    """Why a sample must be skipped before decoding, or None."""
    for value in parts.values():
        if isinstance(value, Oversized):
            return value.reason
    label = parts.get("cls")
    if label is not None:
        try:
            label.decode("utf-8")
        except UnicodeDecodeError:
            return f".cls label is not UTF-8 text ({label[:16]!r})"
    return None


def shuffled(items, size: int, rng: np.random.Generator):
    """Approximate shuffle with a buffer of `size` items."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(IterableDataset):
    """Iterating it directly yields (uint8 C x H x W, label) for every sample of the split, in order."""

    def __init__(self, pattern: str, split: Split, *, in_chans=3, split_seed: int | None = 0, max_pixels=89_478_485,
                 max_member_bytes: int = MAX_MEMBER_BYTES):
        if "{split}" in pattern:
            pattern = pattern.replace("{split}", split.name)
        elif split.name != "train":
            raise DataError(f"shards:{pattern} has no {{split}} placeholder, so it only has the split 'train', "
                            f"not {split.name!r}; use e.g. shards:/data/{{split}}-{{0000..0099}}.tar or train[98%:]")
        if split.uses_counts:
            raise DataError(f"split {split_text(split)!r}: streamed shards are split by percentages, not counts")
        self.urls = expand_braces(pattern)
        missing = [u for u in self.urls if not Path(u).is_file()]
        if missing:
            raise DataError(f"shards: {len(missing)} of {len(self.urls)} shard files of {pattern!r} do not exist, "
                            f"e.g. {missing[0]}")
        directory = Path(self.urls[0]).parent
        names_file = directory / "classes.txt"
        if not names_file.is_file():
            raise DataError(f"shards: {names_file} not found; write the class names there, one per line, "
                            f"in label order")
        self.class_names = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
        self.num_classes = len(self.class_names)
        self.split, self.in_chans, self.max_pixels = split, in_chans, max_pixels
        self.max_member_bytes = max_member_bytes
        self.split_seed = split_seed or 0
        self.fraction = None if split.is_whole else split.fraction_range()
        self.num_samples = self._count(directory / "sizes.json")
        self.plan = None  # set by the loader (see ShardStream)

    def _count(self, sizes_file: Path) -> int | None:
        if not sizes_file.is_file():
            return None
        try:
            sizes = json.loads(sizes_file.read_text())
            n = sum(int(sizes.get(Path(u).name, 0)) for u in self.urls)
        except (ValueError, TypeError, AttributeError) as e:  # not JSON, not an object, not counts
            raise DataError(f"{sizes_file}: not a JSON object of shard name -> sample count ({e}); fix or delete "
                            "it (it only tells how many samples the shards hold)") from None
        lo, hi = self.fraction or (0.0, 1.0)
        return int(round(n * (hi - lo)))  # an estimate: the split is by key hash

    def samples(self, urls):
        """(name, image bytes, label text, problem) for the split's samples of the given shards; `problem` says why
        a sample (or the rest of a damaged shard) must be skipped, else None."""
        for url in urls:
            try:
                for key, parts in tar_samples(url, self.max_member_bytes):
                    if self.fraction and not self.fraction[0] <= key_fraction(key, self.split_seed) < self.fraction[1]:
                        continue
                    problem = sample_problem(parts)
                    if problem:
                        yield f"{url}:{key}", None, None, problem
                        continue
                    image = next((parts[e] for e in parts if "." + e in IMAGE_EXTENSIONS), None)
                    label = parts.get("cls")
                    yield f"{url}:{key}", image, None if label is None else label.decode().strip(), None
            except (tarfile.TarError, OSError, EOFError) as e:
                log.warning("shard %s is damaged, skipping the rest of it: %s", url, e)
                yield f"{url}", None, None, f"damaged shard: {e}"

    def decode_sample(self, name, image, label, problem=None, transform=None, rng=None):
        if problem:
            raise BadImage(name, problem)
        if image is None:
            raise BadImage(name, "no image file in the sample")
        try:
            y = int(label)
        except (TypeError, ValueError):
            raise BadImage(name, f"missing or non-integer .cls label {label!r}") from None
        if not 0 <= y < self.num_classes:
            raise BadImage(name, f"label {y} outside 0..{self.num_classes - 1}")
        if transform is None:
            return decode(io.BytesIO(image), name, self.in_chans, self.max_pixels), y
        return transform(open_image(io.BytesIO(image), name, self.max_pixels), rng, name), y

    def records(self, wanted=None):
        """(index, (image, label) or None for a bad sample) in stream order; with `wanted`, only the indices it
        accepts are decoded (evaluation shares the stream out by index)."""
        for index, (name, image, label, problem) in enumerate(self.samples(self.urls)):
            if wanted is not None and not wanted(index):
                continue
            try:
                yield index, self.decode_sample(name, image, label, problem)
            except BadImage as e:
                log.warning("skipping %s: %s", e.name, e.reason)
                yield index, None

    def __iter__(self):
        """(image, label) of every readable sample; bad ones are logged and counted in `self.skipped`."""
        self.skipped = 0
        for _, sample in self.records():
            if sample is None:
                self.skipped += 1
            else:
                yield sample


class ShardStream(IterableDataset):
    """What the loader's workers iterate: batches of one role's share of the shards.

    plan: seed, epoch, rank, world_size, train, batch_size, shuffle_buffer, transform,
    roles (worker id -> role), skip (role -> samples already consumed this epoch).
    """

    def __init__(self, dataset: ShardDataset, plan: dict):
        self.dataset, self.plan = dataset, plan

    def role_urls(self, role: int, num_roles: int) -> list[str]:
        p, urls = self.plan, list(self.dataset.urls)
        if p["train"]:
            urls = [urls[i] for i in np.random.default_rng((p["seed"], p["epoch"])).permutation(len(urls))]
        return urls[p["rank"] :: p["world_size"]][role::num_roles]

    def __iter__(self):
        p = self.plan
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        num_roles = len(p["roles"])
        role = p["roles"][worker]
        if role < 0:  # a role that had finished before the checkpoint
            return
        skip = p["skip"][role]
        stream = self.dataset.samples(self.role_urls(role, num_roles))
        key = (p["seed"], p["epoch"], p["rank"], role)
        if p["train"]:
            stream = shuffled(stream, p["shuffle_buffer"], np.random.default_rng(key + (1,)))
        images, labels, bad, position = [], [], [], 0
        for name, image, label, problem in stream:
            position += 1
            if position <= skip:  # resume: pass over what was consumed, without decoding
                continue
            try:
                x, y = self.dataset.decode_sample(name, image, label, problem, p["transform"],
                                                  np.random.default_rng(key + (position,)))
            except BadImage as e:
                bad.append((e.name, e.reason))
                continue
            images.append(x)
            labels.append(y)
            if len(images) == p["batch_size"]:
                yield batch_record(images, labels, bad, role, position)
                images, labels, bad = [], [], []
        if images and not p["train"]:
            yield batch_record(images, labels, bad, role, position)
        elif bad or images:  # nothing to train on, but the skipped files must still be reported
            yield batch_record([], [], bad, role, position)


def batch_record(images, labels, bad, role=0, position=0) -> dict:
    return {"images": torch.stack(images) if images else None, "labels": torch.tensor(labels, dtype=torch.long),
            "bad": bad, "role": role, "consumed": position}
