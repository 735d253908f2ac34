"""CIFAR-10 / CIFAR-100 from the official *binary* archives (never the pickled ones).

Record layout: CIFAR-10 <1 label byte><3072 pixel bytes>; CIFAR-100 <coarse><fine><3072>,
pixels as 1024 red, 1024 green, 1024 blue, rows of 32. Read from the .tar.gz as is, or from
the folder it extracts to.
"""
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset
from .download import cache_dir, download
from .errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    archive: str
    folder: str
    md5: str
    files: dict  # split -> member names
    label_bytes: int
    names_file: str


VARIANTS = {
    "cifar10": Variant("cifar-10-binary.tar.gz", "cifar-10-batches-bin", "c32a1d4ab5d03f1284b67883e8d87530",
                       {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
                       1, "batches.meta.txt"),
    "cifar100": Variant("cifar-100-binary.tar.gz", "cifar-100-binary", "03b5dce01913d631647c71ecec9e9cb8",
                        {"train": ["train.bin"], "test": ["test.bin"]}, 2, "fine_label_names.txt"),
}
URL = "https://www.cs.toronto.edu/~kriz/"


def read_members(which: str, root, allow_download: bool) -> dict[str, bytes]:
    """The bytes of the split files + class-names file, from an extracted folder or the archive."""
    v = VARIANTS[which]
    dirs = ([Path(root)] if root else []) + [cache_dir(which)]
    wanted = [f for files in v.files.values() for f in files] + [v.names_file]
    for d in dirs:
        for folder in (d / v.folder, d):
            if all((folder / f).is_file() for f in wanted):
                return {f: (folder / f).read_bytes() for f in wanted}
        if (d / v.archive).is_file():
            return read_archive(d / v.archive, v.folder, wanted)
    looked = ", ".join(str(d) for d in dirs)
    if not allow_download:
        raise DataError(f"{which}: neither {v.archive} nor {v.folder}/ found in {looked} (download disabled)")
    archive = download(URL + v.archive, cache_dir(which) / v.archive, md5=v.md5)
    return read_archive(archive, v.folder, wanted)


def read_archive(path: Path, folder: str, wanted: list[str]) -> dict[str, bytes]:
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted and Path(member.name).parent.name == folder:
                    out[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read CIFAR archive {path}: {e}") from None
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise DataError(f"CIFAR archive {path} lacks {folder}/{missing}")
    return out


def parse_records(data: bytes, label_bytes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + 3072
    if len(data) % record:
        raise DataError(f"{name}: {len(data)} bytes is not a whole number of {record}-byte CIFAR records")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].astype(np.int64)


def load(which: str, split: str, root=None, *, in_chans=3, allow_download=True) -> ArrayDataset:
    v = VARIANTS[which]
    if split not in v.files:
        raise DataError(f"{which} has splits {list(v.files)}, not {split!r}")
    members = read_members(which, root, allow_download)
    parts = [parse_records(members[f], v.label_bytes, f) for f in v.files[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    names = [line.strip() for line in members[v.names_file].decode().splitlines() if line.strip()]
    if len(labels) and labels.max() >= len(names):
        raise DataError(f"{which} {split}: label {labels.max()} but only {len(names)} names in {v.names_file}")
    log.info("%s %s: %d images", which, split, len(images))
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), names, in_chans=in_chans, name=which)
