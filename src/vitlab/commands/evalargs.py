"""Arguments and set-up shared by the evaluation commands (eval, fewshot, vtab, predict)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..evaluation.batches import model_image_size
from ..runtime import Dist, RuntimeSettingError, check_precision, resolve_precision, setup


def add_model_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint (vitlab dir, .npz, timm or HF)")
    parser.add_argument("--image-size", type=int, default=None, help="input resolution (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (auto: a GPU when there is one)")
    parser.add_argument("--precision", "--amp", dest="precision", default="auto", type=precision_argument,
                        help="fp32, bf16, fp16 (autocast) or auto: bf16 on a GPU that has it, else fp32")


def precision_argument(text: str) -> str:
    """argparse type for a precision: every command accepts the same values, with the same message."""
    try:
        return check_precision(text)
    except RuntimeSettingError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_data_arguments(parser, *, split: str | None = "test") -> None:
    parser.add_argument("--data", required=True, help="data set spec: fashion_mnist, cifar10, folder:/path, ...")
    parser.add_argument("--root", default=None, help="where the data set's files are")
    if split:
        parser.add_argument("--split", default=split, help=f"split to evaluate (default {split}; e.g. train[98%%:])")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes")
    parser.add_argument("--output-dir", default=None, help="where to write results (default: CHECKPOINT/eval)")


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
    if args.output_dir:
        return Path(args.output_dir)
    ckpt = Path(checkpoint)
    return ckpt / what if ckpt.is_dir() else ckpt.parent / f"{ckpt.stem}-{what}"


def image_size_of(model, args) -> tuple[int, int]:
    return model_image_size(model) if args.image_size is None else (args.image_size, args.image_size)


def json_text(data) -> str:
    """JSON with NaN written as null (a class without samples has no accuracy)."""

    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), indent=2) + "\n"


def write_json(path: Path, data) -> None:
    from ..fileio import atomic_write_text

    atomic_write_text(path, json_text(data))
