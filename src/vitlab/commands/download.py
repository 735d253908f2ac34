"""`vitlab download NAME...`: fetch checkpoints or data sets into the cache (for offline use later) and print
where they are. A name no source knows is refused, and nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from ..checkpoints.remote import is_remote, resolve
from ..errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="hf-hub:ORG/NAME[@REVISION], an http(s) URL, an official name "
                             "(`vitlab models --pretrained` lists them), or a data set: fashion_mnist, cifar10, "
                             "cifar100")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    for name in args.names:
        known(name)  # every name, before anything is fetched
    for name in args.names:
        print(fetch(name, progress=False if args.no_progress else None))
    return 0


def known(name: str) -> None:
    from ..data.sources import ALIASES

    if name.strip().lower() not in ALIASES and not Path(name).exists() and not is_remote(name):
        raise UsageError(f"{name!r}: no source knows this name, nothing downloaded; give hf-hub:ORG/NAME, an "
                         "http(s) URL, an official name (`vitlab models --pretrained`) or a data set "
                         f"({', '.join(sorted(set(ALIASES.values())))})")


def fetch(name: str, progress: bool | None) -> str:
    """Where `name` is now on this machine: a checkpoint's path, or a data set's splits in the cache."""
    from ..data import build_dataset
    from ..data.sources import ALIASES

    dataset = ALIASES.get(name.strip().lower())
    if dataset is None:
        return str(resolve(name, progress=progress))
    sizes = {split: len(build_dataset(dataset, split)) for split in ("train", "test")}
    return f"{dataset}: {sizes['train']:,} training and {sizes['test']:,} test images, here for offline use"
