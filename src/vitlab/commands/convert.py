"""`vitlab convert SRC DST --to {vitlab,hf,timm,npz,onnx}`: any checkpoint vitlab reads, written in another format.

`--to onnx` writes a deployable graph (vitlab.serving.onnx; `--quantize int8` for onnxruntime's dynamic int8)."""

from __future__ import annotations

import sys

from ..checkpoints import CheckpointError, convert, detect_format
from ..checkpoints.export import WRITERS


def add_arguments(parser) -> None:
    parser.add_argument("source", help="an official/big_vision .npz, a timm .safetensors/.pth/.bin, "
                                       "or a vitlab / Hugging Face folder")
    parser.add_argument("destination", help="a folder (vitlab, hf) or a file (timm .safetensors, npz .npz)")
    parser.add_argument("--to", required=True, choices=sorted(WRITERS) + ["onnx"], help="the format to write")
    parser.add_argument("--quantize", default=None, choices=["int8"],
                        help="with --to onnx: int8 weights for the MatMul/Gemm layers (onnxruntime dynamic)")
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
    if args.quantize and args.to != "onnx":
        print("vitlab convert: --quantize applies only to --to onnx", file=sys.stderr)
        return 2
    try:
        fmt = detect_format(args.source)
        if args.to == "onnx":
            return to_onnx(args, fmt, kwargs)
        out = convert(args.source, args.destination, args.to, num_classes=args.num_classes,
                      posemb_method=args.posemb_method, **kwargs)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"vitlab convert: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.source} ({fmt}) -> {out} ({args.to})")
    return 0


def to_onnx(args, fmt: str, kwargs: dict) -> int:
    try:
        from ..serving.onnx import export_onnx
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as e:
        print(f"vitlab convert: {e.name or e} is not installed; pip install 'vitlab[onnx]'", file=sys.stderr)
        return 2
    from ..checkpoints import load_pretrained

    model = load_pretrained(args.source, num_classes=args.num_classes, posemb_method=args.posemb_method, **kwargs)
    out = export_onnx(model, args.destination, quantize=args.quantize, source=args.source)
    print(f"converted {args.source} ({fmt}) -> {out} (onnx{', int8' if args.quantize else ''}) "
          f"+ {out.with_suffix('.json').name}")
    return 0
