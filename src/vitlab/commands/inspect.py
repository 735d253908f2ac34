"""`vitlab inspect`: the paper's figures of what a ViT learned (Section 4.5, Appendix D) for a checkpoint.

    vitlab inspect --checkpoint runs/fmnist --data fashion_mnist --num-images 256 --out inspect/
    vitlab inspect --checkpoint ViT-B_16.npz cat.jpg dog.jpg --out inspect/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import common


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", help="image files to draw attention maps for")
    which = parser.add_mutually_exclusive_group(required=True)
    common.add_checkpoint_args(parser, required=False, group=which)
    which.add_argument("--model", type=common.model_name,
                       help="a randomly initialised named model instead (e.g. ViT-B/16), for a smoke test")
    common.add_output_args(parser, out="required", out_help="directory for the figures",
                           json_help="print the written files as JSON")
    common.add_data_args(parser, required=False, split="test",
                         spec_help="data set spec (fashion_mnist, cifar10, folder:/dir, ...) to take images from: "
                                   "the first --show are drawn when no image files are given, and --num-images are "
                                   "streamed for the mean attention distance")
    parser.add_argument("--num-images", type=common.integer(1), default=8,
                        help="images of --data to average the mean attention distance over (default: 8)")
    parser.add_argument("--show", type=common.integer(1), default=8, help="images of --data to draw (default: 8)")
    parser.add_argument("--figures", default=list(_figures()), type=figure_list,
                        help="comma-separated subset of rollout,distance,posemb,filters (default: all)")
    parser.add_argument("--batch-size", type=common.integer(1), default=32)
    parser.add_argument("--image-size", type=common.image_size,
                        help="run at this resolution (resamples position embeddings)")
    parser.add_argument("--in-chans", type=int, choices=common.IN_CHANS,
                        help="input channels, with --model (default 3)")
    parser.add_argument("--num-heads", type=common.integer(1),
                        help="head count, for checkpoint formats that do not store it")
    common.add_runtime_args(parser, precision="fp32")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _figures():
    from ..inspection import FIGURES
    return FIGURES


def figure_list(text: str) -> list[str]:
    """argparse type for --figures: comma-separated names from FIGURES, at least one."""
    wanted = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in _figures()]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: choose from {','.join(_figures())}")
    return wanted


def load_model(args):
    from .. import load_pretrained
    overrides = {"num_heads": args.num_heads} if args.num_heads else {}
    if args.checkpoint:
        return load_pretrained(args.checkpoint, image_size=args.image_size, **overrides)
    if args.in_chans:
        overrides["in_chans"] = args.in_chans
    if args.image_size:
        overrides["image_size"] = args.image_size
    torch.manual_seed(0)
    return common.named_model(args.model, **overrides)


def run(args) -> int:
    if not args.images and not args.data:
        raise common.UsageError("give image files, or --data SPEC to take images from a data set")
    return inspect(args)


def inspect(args) -> int:
    from ..data import build_dataset
    from ..inspection import dataset_batches, inspect_model, load_image_files
    from ..inspection.report import describe
    from ..runtime import resolve_precision

    start = time.perf_counter()
    device = common.resolve_device(args.device)
    model = load_model(args).to(device).eval()
    label = f"{Path(args.checkpoint).name if args.checkpoint else args.model}: {describe(model.config)}"

    dataset = distance_batches = None
    if args.data:
        dataset = build_dataset(args.data, args.split, root=args.data_root, in_chans=model.config.in_chans)
        distance_batches = (images for images, _ in dataset_batches(dataset, model, args.num_images, args.batch_size))
    if args.images:
        images = load_image_files(args.images, model)
        captions = [Path(p).stem for p in args.images]
    else:
        shown = next(dataset_batches(dataset, model, args.show, args.show), None)
        if shown is None:
            raise common.UsageError(f"--data {args.data} split {args.split!r} has no images")
        images, captions = shown
    total = min(args.num_images, len(dataset)) if hasattr(dataset, "__len__") else None
    written = inspect_model(model, args.out, images, captions, distance_batches=distance_batches,
                            distance_total=total, figures_wanted=args.figures, batch_size=args.batch_size, label=label,
                            progress=not args.no_progress, precision=resolve_precision(args.precision, device))
    written.update(draw_objective(args, model, images, captions, label))
    main = [p for k, p in written.items() if "/" not in k]
    if args.json:
        common.print_json({"out": str(args.out), "files": {k: str(p) for k, p in written.items()},
                           "seconds": time.perf_counter() - start})
        return 0
    print(f"wrote {len(written)} files to {args.out} in {time.perf_counter() - start:.1f} s:")
    for path in main:
        print(f"  {path}")
    return 0


def draw_objective(args, model, images, captions, label) -> dict:
    """A self-supervised checkpoint (one with objective.json beside the encoder): what it predicts."""
    from ..checkpoints.load import latest_run_checkpoint
    from ..inspection.objective import draw_objective_predictions
    from ..training.objectives import load_objective

    if not args.checkpoint or not Path(args.checkpoint).is_dir():
        return {}
    directory = latest_run_checkpoint(Path(args.checkpoint)) or Path(args.checkpoint)
    objective = load_objective(directory, model)
    if objective is None:
        return {}
    path = Path(args.out) / "objective_predictions.png"
    return {"objective_predictions": draw_objective_predictions(model, objective, images, captions, path,
                                                                title=f"{objective.name}: {label}")}
