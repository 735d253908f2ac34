"""Source specs ("fashion_mnist", "cifar10", "cifar100", "folder:/dir", "shards:/dir/x-{000..009}.tar")
and `build_dataset`, which turns a spec + split spec into a data set."""
from . import cifar, fashion_mnist, folder, quadrants, shards
from .errors import DataError
from .splits import parse_split, select

ALIASES = {"fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist",
           "cifar10": "cifar10", "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100",
           "quadrants": "quadrants"}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """("fashion_mnist" | "cifar10" | "cifar100" | "folder" | "shards", path or None)."""
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    if sep and kind.lower() in ("folder", "shards"):
        if not arg.strip():
            raise DataError(f"dataset {spec!r}: {kind}: needs a path, e.g. {kind}:/data/imagenet")
        return kind.lower(), arg.strip()
    if text.lower() in ALIASES:
        return ALIASES[text.lower()], None
    raise DataError(f"unknown dataset {spec!r}: use fashion_mnist, cifar10, cifar100, folder:/dir or "
                    f"shards:/dir/train-{{000000..000099}}.tar")


def build_dataset(spec: str, split: str, *, root=None, in_chans: int = 3, split_seed: int | None = 0,
                  download: bool = True, max_pixels: int = 89_478_485, max_member_bytes: int = shards.MAX_MEMBER_BYTES):
    """A data set of (uint8 C x H x W tensor, int label) with `num_classes` and `class_names`.

    Map-style for everything but shards (an IterableDataset, split across ranks and workers by
    the loader). Raises DataError, naming what was looked for and where, when nothing is found.
    """
    kind, arg = parse_spec(spec)
    s = parse_split(split)
    if kind == "shards":
        return shards.ShardDataset(arg, s, in_chans=in_chans, split_seed=split_seed, max_pixels=max_pixels,
                                   max_member_bytes=max_member_bytes)
    if kind == "fashion_mnist":
        base = fashion_mnist.load(s.name, root, in_chans=in_chans, allow_download=download)
    elif kind == "quadrants":
        base = quadrants.load(s.name, root, in_chans=in_chans, allow_download=download)
    elif kind in ("cifar10", "cifar100"):
        base = cifar.load(kind, s.name, root, in_chans=in_chans, allow_download=download)
    else:
        base = folder.load(arg, s.name, in_chans=in_chans, max_pixels=max_pixels)
    if s.is_whole:
        return base
    picked = select(s, len(base), split_seed, f"{spec} split {s.name!r}")
    return base.subset(picked)


__all__ = ["build_dataset", "parse_spec"]
