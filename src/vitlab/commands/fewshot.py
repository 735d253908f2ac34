"""`vitlab fewshot`: few-shot linear accuracy (k images per class, several seeds) and a linear probe."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..evaluation import EvalBatches, extract_features, fewshot_results, linear_probe
from ..evaluation.fewshot import DEFAULT_L2, DEFAULT_SHOTS, format_fewshot, shots_needed
from ..evaluation.probe import DEFAULT_PROBE_L2
from ..evaluation.batches import model_preprocessing
from . import common, evalargs


def add_arguments(parser) -> None:
    evalargs.add_model_arguments(parser)
    evalargs.add_data_arguments(parser, split=None)
    parser.add_argument("--train-split", default="train", help="split the few-shot images come from")
    parser.add_argument("--test-split", default="test", help="split accuracy is measured on")
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS), help="images per class")
    parser.add_argument("--seeds", type=int, default=3, help="number of random few-shot draws")
    parser.add_argument("--l2", type=float, default=DEFAULT_L2, help="ridge regularisation (default 2^10)")
    parser.add_argument("--linear-probe", action=argparse.BooleanOptionalAction, default=True,
                        help="also fit a logistic regression on the features of the whole train split")
    parser.add_argument("--probe-l2", type=float, default=DEFAULT_PROBE_L2)
    common.add_output_args(parser, out_help="where to write fewshot.json (default: CHECKPOINT/fewshot)")


def dataset_labels(dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)


def run(args) -> int:
    d, precision = evalargs.runtime_of(args)
    model = evalargs.load_model(args.checkpoint, image_size=args.image_size)
    in_chans = model.config.in_chans
    train = evalargs.build_dataset(args.data, args.train_split, root=args.data_root, in_chans=in_chans)
    test = evalargs.build_dataset(args.data, args.test_split, root=args.data_root, in_chans=in_chans)
    num_classes = train.num_classes
    labels = dataset_labels(train)
    seeds = list(range(args.seeds))

    def features(dataset, indices, desc):
        batches = EvalBatches(dataset, preprocessing=model_preprocessing(model), batch_size=args.batch_size,
                              rank=d.rank, world_size=d.world_size,
                              num_workers=args.num_workers, indices=indices)
        return extract_features(model, batches, device=d.device, precision=precision, desc=desc)

    if args.linear_probe:  # the probe needs every train image, which covers the few-shot sets too
        train_x, train_y, train_idx = features(train, None, f"features {args.train_split}")
    else:
        train_x, train_y, train_idx = features(train, shots_needed(labels, num_classes, args.shots, seeds),
                                               f"features {args.train_split} (few-shot images)")
    test_x, test_y, _ = features(test, None, f"features {args.test_split}")
    if not d.is_main:
        return 0
    result = fewshot_results(labels, train_x, test_x, test_y, num_classes, train_indices=train_idx.numpy(),
                             shots=args.shots, seeds=seeds, l2=args.l2)
    if args.linear_probe:
        result["linear_probe"] = linear_probe(train_x, train_y, test_x, test_y, num_classes, l2=args.probe_l2,
                                              device=d.device)
    result.update(checkpoint=str(args.checkpoint), data=args.data, train_split=args.train_split,
                  test_split=args.test_split, feature_dim=int(train_x.shape[1]))
    out = evalargs.output_dir(args, args.checkpoint, "fewshot")
    evalargs.write_json(out / "fewshot.json", result)
    if args.json:
        common.print_json(result)
    else:
        print(format_fewshot(result))
        print(f"wrote {out / 'fewshot.json'}")
    return 0
