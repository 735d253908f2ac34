"""Fashion-MNIST (Xiao et al. 2017) from its IDX files: 60k train / 10k test, 28 x 28 grey, 10 classes."""
import gzip
import zlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset
from .download import cache_dir, download
from .errors import DataError

log = logging.getLogger(__name__)

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # $VITLAB_FASHION_MNIST_URL overrides
FILES = {  # split -> (images, labels); md5 of the official .gz files
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]  # Debian's dataset-fashion-mnist


def search_dirs(root) -> list[Path]:
    dirs = []
    if root:
        dirs += [Path(root), Path(root) / "fashion-mnist", Path(root) / "fashion_mnist"]
    return dirs + SYSTEM_DIRS + [cache_dir("fashion-mnist")]


def find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: truncated or damaged ({e}); delete it and download it again") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def locate(split: str, root=None, *, allow_download=True) -> tuple[Path, Path]:
    stems = FILES[split]
    dirs = search_dirs(root)
    for d in dirs:
        found = [find(d, s) for s in stems]
        if all(found):
            return found[0], found[1]
    looked = ", ".join(str(d) for d in dirs)
    if not allow_download:
        raise DataError(f"fashion_mnist: {stems[0]}(.gz) and {stems[1]}(.gz) not found in {looked} (download disabled)")
    base = os.environ.get("VITLAB_FASHION_MNIST_URL", URL)
    target = Path(root) if root else cache_dir("fashion-mnist")
    try:
        return tuple(download(base.rstrip("/") + f"/{s}.gz", target / f"{s}.gz", md5=MD5[f"{s}.gz"]) for s in stems)
    except DataError as e:
        raise DataError(f"fashion_mnist: not found in {looked}, and {e}") from None


def load(split: str, root=None, *, in_chans=3, allow_download=True) -> ArrayDataset:
    if split not in FILES:
        raise DataError(f"fashion_mnist has splits {list(FILES)}, not {split!r}")
    images_path, labels_path = locate(split, root, allow_download=allow_download)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"fashion_mnist: {images_path} {images.shape} and {labels_path} {labels.shape} do not match")
    log.info("fashion_mnist %s: %d images from %s", split, len(images), images_path.parent)
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # N x 1 x 28 x 28
    return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), CLASS_NAMES, in_chans=in_chans, name="fashion_mnist")
