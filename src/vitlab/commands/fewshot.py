"""`vitlab fewshot`: few-shot linear accuracy (k images per class, several seeds) and a linear probe."""

from __future__ import annotations

import argparse

from ..evaluation.fewshot import DEFAULT_L2, DEFAULT_SHOTS, fewshot_evaluation, format_fewshot
from ..evaluation.probe import DEFAULT_PROBE_L2
from . import common, evalargs


def add_arguments(parser) -> None:
    evalargs.add_model_arguments(parser)
    evalargs.add_data_arguments(parser, split=None)
    parser.add_argument("--train-split", default="train", help="split the few-shot images come from")
    parser.add_argument("--test-split", default="test", help="split accuracy is measured on")
    parser.add_argument("--shots", type=common.integer(1), nargs="+", default=list(DEFAULT_SHOTS),
                        help="images per class")
    parser.add_argument("--seeds", type=common.integer(1), default=3, help="number of random few-shot draws")
    parser.add_argument("--l2", type=common.number(0, above=True), default=DEFAULT_L2,
                        help="ridge regularisation (default 2^10)")
    parser.add_argument("--linear-probe", action=argparse.BooleanOptionalAction, default=True,
                        help="also fit a logistic regression on the features of the whole train split")
    parser.add_argument("--probe-l2", type=common.number(0, above=True), default=DEFAULT_PROBE_L2)
    common.add_output_args(parser, out_help="where to write fewshot.json (default: CHECKPOINT/fewshot)")


def run(args) -> int:
    d, precision = evalargs.runtime_of(args)
    model = evalargs.load_model(args.checkpoint, image_size=args.image_size)
    in_chans = model.config.in_chans
    train = evalargs.build_dataset(args.data, args.train_split, root=args.data_root, in_chans=in_chans)
    test = evalargs.build_dataset(args.data, args.test_split, root=args.data_root, in_chans=in_chans)
    result = fewshot_evaluation(model, train, test, shots=args.shots, seeds=range(args.seeds), l2=args.l2,
                                probe_l2=args.probe_l2 if args.linear_probe else None, batch_size=args.batch_size,
                                num_workers=args.num_workers, device=d.device, precision=precision,
                                split_names=(args.train_split, args.test_split))
    if result is None:  # not rank 0
        return 0
    result.update(checkpoint=str(args.checkpoint), data=args.data, train_split=args.train_split,
                  test_split=args.test_split)
    out = evalargs.output_dir(args, args.checkpoint, "fewshot")
    evalargs.write_json(out / "fewshot.json", result)
    if args.json:
        common.print_json(result)
    else:
        print(format_fewshot(result))
        print(f"wrote {out / 'fewshot.json'}")
    return 0
