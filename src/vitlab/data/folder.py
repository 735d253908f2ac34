"""Image folders: <dir>/<class>/<image>, or <dir>/<split>/<class>/<image>.

Classes are the sorted sub-folder names that hold at least one image (by extension); with split
sub-folders the class list is the union over all splits, so label ids agree between them.
Files are only listed here; decoding happens in the loader, where a bad file is skipped. Anything that is not
a regular file (a named pipe, a socket, a device: opening one can block forever) is left out when listing,
logged and counted in `unlisted`.
"""
import io
import logging
import os
import stat
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .errors import BadImage, DataError
from .images import IMAGE_EXTENSIONS, decode, open_image

log = logging.getLogger(__name__)


def not_regular(path: str) -> str | None:
    """Why `path` must not be opened (it is not a regular file, or cannot be stat'ed), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot stat ({e.strerror})"
    return None if stat.S_ISREG(mode) else "not a regular file (a pipe, socket or device?)"


def list_images(folder: Path, unlisted: list | None = None) -> list[str]:
    """Image files under `folder` (by extension), sorted; what is not a regular file goes to `unlisted`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            if not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, f)
            why = not_regular(path)
            if why is None:
                out.append(path)
            elif unlisted is not None:
                log.warning("skipping %s: %s", path, why)
                unlisted.append((path, why))
    return out


def has_image(folder: Path) -> bool:
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(folder, followlinks=True) for f in files)


def class_folders(folder: Path, unlisted: list) -> dict[str, list[str]]:
    """class name -> image files; empty class folders are warned about and left out."""
    classes = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = list_images(d, unlisted)
        if files:
            classes[d.name] = files
        else:
            log.warning("skipping empty class folder %s (no %s files)", d, "/".join(IMAGE_EXTENSIONS))
    return classes


def split_folder(root: Path, split: str) -> Path:
    """<root>/<split> when it exists; else <root> itself serves as the only split, "train"."""
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise DataError(f"folder:{root} has no split folder {split!r} (looked for {root / split}); "
                    f"without split folders the directory itself is the 'train' split")


class FolderDataset(Dataset):
    def __init__(self, files: list[str], labels: np.ndarray, class_names: list[str], *, in_chans: int, max_pixels: int,
                 unlisted: list | None = None):
        self.files, self.labels = files, labels
        self.class_names, self.num_classes = class_names, len(class_names)
        self.in_chans, self.max_pixels = in_chans, max_pixels
        self.unlisted = list(unlisted or [])  # (path, reason) of what the scan left out

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        """(uint8 C x H x W, label); raises BadImage for a file that cannot be decoded."""
        why = not_regular(self.files[i])
        if why:
            raise BadImage(self.files[i], why)
        return decode(self.files[i], self.files[i], self.in_chans, self.max_pixels), int(self.labels[i])

    def sample_name(self, i: int) -> str:
        return self.files[i]

    def open(self, i: int):
        """Lazily opened from memory: one read per file, and the bytes stay at hand for decode_box."""
        why = not_regular(self.files[i])  # it may have been replaced since the scan
        if why:
            raise BadImage(self.files[i], why)
        try:
            data = Path(self.files[i]).read_bytes()
        except OSError as e:
            raise BadImage(self.files[i], f"cannot read ({e})") from None
        return open_image(io.BytesIO(data), self.files[i], self.max_pixels)

    def subset(self, indices: np.ndarray) -> "FolderDataset":
        return FolderDataset([self.files[i] for i in indices], self.labels[indices], self.class_names,
                             in_chans=self.in_chans, max_pixels=self.max_pixels, unlisted=self.unlisted)


def load(root: str, split: str, *, in_chans=3, max_pixels=89_478_485) -> FolderDataset:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"folder: {root} does not exist or is not a directory")
    folder = split_folder(root, split)
    split_dirs = [p for p in root.iterdir() if p.is_dir() and folder != root]
    names = set()
    for d in (split_dirs if folder != root else [root]):  # union of classes over all splits
        names |= {p.name for p in d.iterdir() if p.is_dir() and has_image(p)}
    unlisted = []
    classes = class_folders(folder, unlisted)
    class_names = sorted(names)
    index = {n: i for i, n in enumerate(class_names)}
    files = [f for c in classes for f in classes[c]]
    labels = np.array([index[c] for c in classes for _ in classes[c]], dtype=np.int64)
    if not files:
        raise DataError(f"folder: no images ({'/'.join(IMAGE_EXTENSIONS)}) in class sub-folders of {folder}")
    log.info("folder %s: %d images in %d classes", folder, len(files), len(class_names))
    return FolderDataset(files, labels, class_names, in_chans=in_chans, max_pixels=max_pixels, unlisted=unlisted)
