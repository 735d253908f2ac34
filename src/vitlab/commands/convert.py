"""`vitlab convert --checkpoint SRC --out DST --to {vitlab,hf,timm,npz,onnx}`: any checkpoint vitlab reads,
written in another format. (`vitlab convert SRC DST --to ...`, the old positional spelling, still works.)

Each format is one writer of vitlab.checkpoints.export.WRITERS. `--to onnx` writes a deployable graph and its
sidecar (vitlab.checkpoints.onnx; `--quantize int8` for onnxruntime's dynamic int8, with `--calibration DATA` its
static int8)."""

from __future__ import annotations

import argparse

from ..checkpoints import detect_format, export_checkpoint, load_pretrained
from ..checkpoints.export import WRITERS
from ..checkpoints.remote import resolve
from . import common

CALIBRATION_IMAGES = 512  # a few hundred images fix min/max activation ranges (BENCHMARKS.md, "int8 candidates")


def add_arguments(parser) -> None:
    common.add_checkpoint_args(parser, required=False)
    common.add_output_args(parser, out_help="a folder (vitlab, hf) or a file (timm .safetensors, npz .npz, .onnx)",
                           json_help="print what was written as JSON")
    parser.add_argument("source", nargs="?", help=argparse.SUPPRESS)  # the old positional spelling
    parser.add_argument("destination", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--to", required=True, choices=sorted(WRITERS), help="the format to write")
    parser.add_argument("--quantize", default=None, choices=["int8"],
                        help="with --to onnx: int8 weights for the MatMul/Gemm layers (onnxruntime dynamic)")
    parser.add_argument("--calibration", default=None, metavar="DATA",
                        help="with --quantize int8: a data set (fashion_mnist, folder:DIR, ...) whose first "
                        f"{CALIBRATION_IMAGES} training images fix the activation ranges (onnxruntime static int8)")
    parser.add_argument("--num-heads", type=common.integer(1), default=None,
                        help="attention heads, for a timm state dict of non-standard width (it does not store them)")
    parser.add_argument("--num-classes", type=common.num_classes, default=None,
                        help="replace the head (zero-initialised)")
    parser.add_argument("--image-size", type=common.image_size, nargs="+", default=None,
                        help="resample the position embeddings to this size (one number, or height width)")
    parser.add_argument("--posemb-method", default="official", choices=["official", "bilinear", "bicubic"])


def source_and_destination(args) -> tuple[str, str]:
    source, destination = args.checkpoint or args.source, args.out or args.destination
    if args.checkpoint and args.source and not args.out and not args.destination:
        destination = args.source  # `convert --checkpoint SRC DST`
    if not source or not destination:
        raise common.UsageError("give the checkpoint to convert and where to write it: "
                                "--checkpoint SRC --out DST --to FORMAT")
    return source, destination


def run(args) -> int:
    source, destination = source_and_destination(args)
    kwargs = {}
    if args.num_heads:
        kwargs["num_heads"] = args.num_heads
    if args.image_size:
        kwargs["image_size"] = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size[:2])
    writer = WRITERS[args.to]
    if args.quantize and "quantize" not in writer.options:
        raise common.UsageError("--quantize applies only to --to onnx")
    if args.calibration and args.quantize != "int8":
        raise common.UsageError("--calibration applies only to --to onnx --quantize int8")
    source = resolve(source)  # hf-hub:, a URL or an official name: fetched into the cache
    fmt = detect_format(source)
    model = load_pretrained(source, num_classes=args.num_classes, posemb_method=args.posemb_method, **kwargs)
    options = {"quantize": args.quantize, "source": source,
               "calibration": calibration_batches(model, args.calibration) if args.calibration else None}
    out = export_checkpoint(model, destination, args.to,
                            **{name: value for name, value in options.items() if name in writer.options})
    what = args.to + (", int8" if args.quantize else "") + (" static" if args.calibration else "")
    if args.json:
        common.print_json({"source": str(source), "source_format": fmt, "out": str(out), "format": what})
    else:
        extra = f" + {writer.beside(out).name}" if writer.beside else ""
        print(f"converted {source} ({fmt}) -> {out} ({what}){extra}")
    return 0


def calibration_batches(model, spec: str, images: int = CALIBRATION_IMAGES) -> list:
    """The first `images` training images of data set `spec`, preprocessed as the model's checkpoint says."""
    from ..data import build_dataset
    from ..data.preprocessing import of_model
    from ..evaluation import EvalBatches

    dataset = build_dataset(spec, f"train[:{images}]", in_chans=model.config.in_chans)
    return [x for x, _, _ in EvalBatches(dataset, preprocessing=of_model(model), batch_size=64)]
