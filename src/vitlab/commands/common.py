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

Values are checked where they are parsed: the argparse types below (integer, number, image_size, port,
model_name, device_name) refuse a value out of range, so argparse names the option in its one-line refusal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..data.config import MAX_WORKERS
from ..errors import UsageError
from ..models.vit_config import MAXIMA

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # vitlab.runtime.CHOICES, listed here for --help
IN_CHANS = (1, 3)  # images are read as grey or RGB


class DeprecatedAlias(argparse.Action):
    """An old flag spelling: stores into the new flag's destination and says once on stderr what to use."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new_flag} (the old spelling goes in the next release)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """`old` as a hidden spelling of `new` (same destination; kwargs such as type= and choices= as `new` has)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new_flag=new, **kwargs)


def add_checkpoint_args(parser, *, required: bool = True, group=None) -> None:
    (group or parser).add_argument("--checkpoint", required=required, type=non_empty,
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
                        help=precision_help or f"autocast precision; weights stay fp32 (auto: bf16 where the device "
                                               f"computes it natively, a GPU or a CPU with AVX-512 BF16 or AMX; "
                                               f"default {precision})")
    add_alias(parser, "--amp", "--precision", "precision", type=precision_name)


def add_device_arg(parser) -> None:
    parser.add_argument("--device", default="auto", type=device_name,
                        help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")


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


# ---- argparse types: a bad value is refused while parsing, in one line that names the option --------------
def integer(minimum: int, maximum: int | None = None):
    """argparse type: a whole number in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(minimum: float, maximum: float = math.inf, *, above: bool = False):
    """argparse type: a finite real number in [minimum, maximum] (minimum itself excluded with above=True)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value) or value < minimum or value > maximum or (above and value == minimum):
            bound = f"{'>' if above else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum < math.inf else "")
            raise argparse.ArgumentTypeError(f"must be a number {bound}, not {text}")
        return value

    parse.__name__ = "number"
    return parse


image_size = integer(1, MAXIMA["image_size"])
port = integer(0, 65535)
seed = integer(0, 2**32 - 1)  # numpy's generators take seeds below 2**32
workers = integer(0, MAX_WORKERS)
num_classes = integer(0, MAXIMA["num_classes"])  # 0: no head, the model gives its features


def non_empty(text: str) -> str:
    """argparse type for a path or name that must be given (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a path or a name")
    return text


def model_name(text: str) -> str:
    """argparse type for --model: a registered name (`vitlab models`), in its registered spelling."""
    from ..models.registry import canonical_name

    try:
        return canonical_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_name(text: str) -> str:
    """argparse type for --device: auto, cpu, cuda or cuda:N, present on this machine."""
    from ..runtime import RuntimeSettingError, pick_device

    try:
        pick_device(text)
    except RuntimeSettingError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def named_config(name: str, flags: dict | None = None, **overrides):
    """The config of a command's --model with its size options (allocates nothing); an impossible combination
    (an --image-size the patch size does not divide) is a usage error naming the options (`flags`: the option
    that gave an override, when it is not --KEY)."""
    from ..models.registry import model_config

    try:
        return model_config(name, **overrides)
    except ValueError as e:
        flags = flags or {}
        given = "".join(f" {flags.get(k, '--' + k.replace('_', '-'))} {v}" for k, v in overrides.items())
        raise UsageError(f"--model {name}{given}: {e}") from None


def named_model(name: str, **overrides):
    """The model of a command's --model with its size options, freshly initialised (see named_config)."""
    from ..models.registry import build_model

    return build_model(named_config(name, **overrides))


def check_batch_fits(batch_size: int, in_chans: int, image_size) -> None:
    """Refuse a --batch-size whose input images (of image_size, or (height, width)) alone would not fit in this
    machine's memory."""
    from ..training.memory import machine_memory

    height, width = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    need = batch_size * in_chans * height * width * 4
    available = machine_memory("cpu")
    if available is not None and need > available[0]:
        raise UsageError(f"--batch-size {batch_size} at --image-size {image_size}: the input alone needs "
                         f"{need / 2**30:,.0f} GiB and this machine has {available[0] / 2**30:,.0f} GiB; "
                         "give a smaller --batch-size")
