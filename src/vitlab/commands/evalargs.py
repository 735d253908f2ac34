"""Arguments and set-up shared by the evaluation commands (eval, fewshot, vtab, predict)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..runtime import Dist, resolve_precision, setup
from . import common


def add_model_arguments(parser) -> None:
    common.add_checkpoint_args(parser)
    parser.add_argument("--image-size", type=common.image_size, default=None,
                        help="input resolution (default: the checkpoint's)")
    common.add_runtime_args(parser, precision="auto")


def add_data_arguments(parser, *, split: str | None = "test") -> None:
    common.add_data_args(parser, split=split)
    parser.add_argument("--batch-size", type=common.integer(1), default=256)
    parser.add_argument("--num-workers", type=common.workers, default=2, help="image-decoding worker processes")


def runtime_of(args) -> tuple[Dist, str]:
    """This process's place in the run (device, rank; joins torchrun's group) and the precision to run in."""
    d = setup(args.device)
    return d, resolve_precision(args.precision, d.device)


def load_model(checkpoint: str, *, image_size: int | None = None, num_classes: int | None = None):
    from ..checkpoints import load_pretrained

    return load_pretrained(checkpoint, image_size=image_size, num_classes=num_classes)


def build_dataset(spec: str, split: str, *, root=None, in_chans: int = 3):
    from ..data import build_dataset as build

    return build(spec, split, root=root, in_chans=in_chans)


def output_dir(args, checkpoint: str, what: str) -> Path:
    if args.out:
        return Path(args.out)
    from ..checkpoints.remote import is_remote

    if is_remote(checkpoint):  # hf-hub:ORG/NAME, a URL or an official name: a folder here named after it
        return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint).strip("_") + f"-{what}")
    ckpt = Path(checkpoint)
    return ckpt / what if ckpt.is_dir() else ckpt.parent / f"{ckpt.stem}-{what}"


def write_json(path: Path, data) -> None:
    from ..fileio import atomic_write_text

    atomic_write_text(path, common.json_text(data))
