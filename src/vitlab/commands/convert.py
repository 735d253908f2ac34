"""`vitlab convert SRC DST --to {vitlab,hf,timm,npz}`: any checkpoint vitlab reads, written in another format."""

from __future__ import annotations

import sys

from ..checkpoints import CheckpointError, convert, detect_format
from ..checkpoints.export import WRITERS


def add_arguments(parser) -> None:
    parser.add_argument("source", help="an official/big_vision .npz, a timm .safetensors/.pth/.bin, "
                                       "or a vitlab / Hugging Face folder")
    parser.add_argument("destination", help="a folder (vitlab, hf) or a file (timm .safetensors, npz .npz)")
    parser.add_argument("--to", required=True, choices=sorted(WRITERS), help="the format to write")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, for a timm state dict of non-standard width (it does not store them)")
    parser.add_argument("--num-classes", type=int, default=None, help="replace the head (zero-initialised)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None,
                        help="resample the position embeddings to this size (one number, or height width)")
    parser.add_argument("--posemb-method", default="official", choices=["official", "bilinear", "bicubic"])


def run(args) -> int:
    kwargs = {}
    if args.num_heads:
        kwargs["num_heads"] = args.num_heads
    if args.image_size:
        kwargs["image_size"] = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size[:2])
    try:
        fmt = detect_format(args.source)
        out = convert(args.source, args.destination, args.to, num_classes=args.num_classes,
                      posemb_method=args.posemb_method, **kwargs)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"vitlab convert: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.source} ({fmt}) -> {out} ({args.to})")
    return 0
