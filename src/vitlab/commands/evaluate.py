"""`vitlab eval`: top-1/top-5, per-class accuracy, a confusion-matrix PNG, and ImageNet ReaL accuracy."""

from __future__ import annotations

from ..data.preprocessing import of_model
from ..evaluation import EvalBatches, align_to_dataset, evaluate, load_real_labels, save_confusion_png
from ..evaluation.metrics import format_summary
from . import common, evalargs


def add_arguments(parser) -> None:
    evalargs.add_model_arguments(parser)
    evalargs.add_data_arguments(parser, split="test")
    parser.add_argument("--real", default=None, help="ImageNet ReaL labels file (real.json) for ReaL accuracy")
    common.add_output_args(parser, out_help="where to write metrics.json and the confusion matrix "
                                            "(default: CHECKPOINT/eval)")


def run(args) -> int:
    d, precision = evalargs.runtime_of(args)
    model = evalargs.load_model(args.checkpoint, image_size=args.image_size)
    dataset = evalargs.build_dataset(args.data, args.split, root=args.data_root, in_chans=model.config.in_chans)
    if getattr(dataset, "num_classes", model.num_classes) != model.num_classes:
        raise common.UsageError(f"--data {args.data} has {dataset.num_classes} classes but {args.checkpoint} predicts "
                         f"{model.num_classes}; evaluate a checkpoint fine-tuned on this data set")
    real = align_to_dataset(load_real_labels(args.real), dataset) if args.real else None
    batches = EvalBatches(dataset, preprocessing=of_model(model), batch_size=args.batch_size,
                          rank=d.rank, world_size=d.world_size,
                          num_workers=args.num_workers)
    result = evaluate(model, batches, device=d.device, precision=precision, real_labels=real, desc=f"eval {args.split}")
    result.update(checkpoint=str(args.checkpoint), data=args.data, split=args.split,
                  skipped_images=_total_skipped(batches.skipped), class_names=getattr(dataset, "class_names", None))
    if not d.is_main:
        return 0
    out = evalargs.output_dir(args, args.checkpoint, "eval")
    evalargs.write_json(out / "metrics.json", result)
    save_confusion_png(result["confusion_matrix"], out / "confusion_matrix.png", result["class_names"],
                       title=f"{args.data} {args.split}")
    if args.json:
        common.print_json(result)
    else:
        print(format_summary(result, result["class_names"]))
        if result["skipped_images"]:
            print(f"skipped {result['skipped_images']} images that could not be decoded")
        print(f"wrote {out / 'metrics.json'} and {out / 'confusion_matrix.png'}")
    return 0


def _total_skipped(local: int) -> int:
    import torch

    from ..runtime import all_reduce_sum

    return int(all_reduce_sum(torch.tensor([local]))[0])
