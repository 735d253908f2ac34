"""`vitlab data SPEC`: what a data source holds, and which of its files are unreadable.

    vitlab data fashion_mnist --split 'train[98%:]'
    vitlab data /data/pets --split train --scan     # decode everything, list bad files
"""

from __future__ import annotations

import logging
import time

from . import common


def add_arguments(parser) -> None:
    parser.add_argument("dataset", type=common.data_spec,
                        help="fashion_mnist | cifar10 | cifar100 | folder:/dir (or a bare directory) | "
                             "shards:/dir/x-{000..009}.tar")
    parser.add_argument("--split", default="train")
    common.add_data_root(parser)
    parser.add_argument("--image-size", type=common.image_size, default=224)
    parser.add_argument("--in-chans", type=int, choices=common.IN_CHANS, default=3)
    parser.add_argument("--batch-size", type=common.integer(1), default=256)
    parser.add_argument("--num-workers", type=common.workers, default=0)
    parser.add_argument("--scan", action="store_true", help="decode every image once (evaluation transform)")
    common.add_output_args(parser, out=None, json_help="print what was found as JSON")


def run(args) -> int:
    from ..data import DataConfig, build_dataset, build_loader

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cfg = DataConfig(dataset=args.dataset, root=args.data_root, image_size=args.image_size, in_chans=args.in_chans,
                     batch_size=args.batch_size, num_workers=args.num_workers)
    ds = build_dataset(cfg.dataset, args.split, root=cfg.root, in_chans=cfg.in_chans, max_pixels=cfg.max_pixels)
    size = len(ds) if hasattr(ds, "__len__") else getattr(ds, "num_samples", None)
    report = {"dataset": args.dataset, "split": args.split, "samples": size, "num_classes": ds.num_classes,
              "class_names": list(ds.class_names)}
    if not args.json:
        print(f"{args.dataset} {args.split}: {size if size is not None else 'unknown number of'} samples, "
              f"{ds.num_classes} classes: {', '.join(ds.class_names[:10])}{' ...' if ds.num_classes > 10 else ''}")
    if args.scan:
        loader = build_loader(cfg, args.split, train=False, dataset=ds)
        start, n = time.perf_counter(), 0
        for _, y in loader:
            n += len(y)
        report.update(decoded=n, seconds=time.perf_counter() - start, summary=loader.summary(),
                      bad_files=list(loader.bad_files))
        if not args.json:
            print(f"decoded {n} images in {report['seconds']:.1f} s; {loader.summary()}")
            for name in loader.bad_files:
                print(f"  bad: {name}")
    if args.json:
        common.print_json(report)
    return 0
