"""`vitlab predict`: the top-5 labels, with probabilities, of image files."""

from __future__ import annotations

from ..evaluation.predict import format_predictions, predict_files
from . import common, evalargs


def add_arguments(parser) -> None:
    evalargs.add_model_arguments(parser)
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, BMP, GIF, TIFF, ...)")
    parser.add_argument("--top-k", type=common.integer(1), default=5)
    parser.add_argument("--batch-size", type=common.integer(1), default=32)
    common.add_output_args(parser, out=None)


def run(args) -> int:
    d, precision = evalargs.runtime_of(args)
    model = evalargs.load_model(args.checkpoint, image_size=args.image_size)
    results = predict_files(model, args.images, topk=args.top_k, batch_size=args.batch_size, device=d.device,
                            precision=precision)
    if args.json:
        common.print_json({"predictions": results})
    else:
        print(format_predictions(results))
    unread = [r for r in results if "error" in r]
    if unread:  # the others were predicted and printed; the exit status says some input was bad
        raise common.UsageError(f"{len(unread)} of {len(results)} images could not be read; the first: "
                                f"{unread[0]['error']}")
    return 0
