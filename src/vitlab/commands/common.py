"""One command-line vocabulary: the arguments several sub-commands share, each idea under one name.

    --checkpoint PATH   the model to use (any format load_pretrained reads)
    --data SPEC         a data set: fashion_mnist, cifar10, cifar100, folder:/dir (or a bare directory), shards:...
    --data-root DIR     where the data set's files are
    --device NAME       auto (a GPU when there is one), cpu, cuda, cuda:1, ...
    --precision NAME    auto, fp32, bf16, fp16 (autocast; weights stay fp32)
    --out PATH          where the command writes its files
    --json              print the result as JSON: an object whose "vitlab_version" names the version that wrote it

Old spellings (--root, --output-dir, --amp) are hidden aliases for one release: they still work, with a
note on stderr naming the new flag.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # vitlab.runtime.CHOICES, listed here for --help


class DeprecatedAlias(argparse.Action):
    """An old flag spelling: stores into the new flag's destination and says once on stderr what to use."""

    def __init__(self, option_strings, dest, new_flag: str, convert=None, **kwargs):
        self.new_flag, self.convert = new_flag, convert
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new_flag} (the old spelling goes in the next release)",
              file=sys.stderr)
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


def add_alias(parser, old: str, new: str, dest: str, convert=None, **kwargs) -> None:
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new_flag=new, convert=convert, **kwargs)


def add_checkpoint_args(parser, *, required: bool = True, group=None) -> None:
    (group or parser).add_argument("--checkpoint", required=required,
                                   help="checkpoint: a vitlab run or folder, official .npz, timm or Hugging Face; "
                                        "or hf-hub:ORG/NAME, an http(s) URL, an official name (vitlab models --pretrained)")


def add_data_args(parser, *, required: bool = True, split: str | None = "test", spec_help: str | None = None) -> None:
    parser.add_argument("--data", required=required, type=data_spec,
                        help=spec_help or "data set: fashion_mnist, cifar10, cifar100, folder:/dir (or a bare "
                                          "directory), shards:/dir/x-{000..009}.tar")
    add_data_root(parser)
    if split:
        parser.add_argument("--split", default=split, help=f"split to use (default {split}; e.g. train[98%%:])")


def add_data_root(parser) -> None:
    parser.add_argument("--data-root", default=None, help="where the data set's files are")
    add_alias(parser, "--root", "--data-root", "data_root")


def add_runtime_args(parser, *, precision: str = "auto", precision_help: str | None = None) -> None:
    add_device_arg(parser)
    parser.add_argument("--precision", default=precision, type=precision_name, metavar="{" + ",".join(PRECISIONS) + "}",
                        help=precision_help or f"autocast precision; weights stay fp32 (auto: bf16 on a GPU that "
                                               f"has it; default {precision})")
    add_alias(parser, "--amp", "--precision", "precision", convert=precision_name)


def add_device_arg(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")


def add_output_args(parser, *, out: str | None = "", out_help: str = "where to write the files",
                    json_help: str = "print the result as JSON") -> None:
    """--out (pass out=None to leave it out) and --json."""
    if out is not None:
        parser.add_argument("--out", default=None, required=out == "required", help=out_help)
        add_alias(parser, "--output-dir", "--out", "out")
    parser.add_argument("--json", action="store_true", help=json_help)


def print_json(result: dict) -> None:
    """What --json prints: the result, with the version of vitlab that computed it."""
    from .. import __version__

    print(json_text({"vitlab_version": __version__, **result}), end="")


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


def precision_name(text: str) -> str:
    """argparse type for --precision: vitlab.runtime's vocabulary (auto, fp32, bf16, fp16; 'none' reads as fp32)."""
    from ..runtime import RuntimeSettingError, check_precision

    try:
        return check_precision(text.lower())
    except RuntimeSettingError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def data_spec(text: str) -> str:
    """A data set spec; a bare path to an existing directory is an image folder (folder:DIR)."""
    from pathlib import Path

    from ..data.sources import ALIASES

    if ":" not in text and text.lower() not in ALIASES and Path(text).is_dir():
        return f"folder:{text}"
    return text


def resolve_device(name: str | None):
    """--device as a torch.device (auto: this process's GPU when there is one, else the CPU)."""
    from ..runtime import pick_device

    return pick_device(name)
