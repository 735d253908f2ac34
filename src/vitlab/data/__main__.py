"""Look at a data source from the command line.

    python -m vitlab.data fashion_mnist --split 'train[98%:]'
    python -m vitlab.data folder:/data/pets --split train --scan     # decode everything, list bad files
"""
import argparse
import logging
import sys
import time

from .config import DataConfig
from .errors import DataError
from .loader import build_loader
from .sources import build_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="fashion_mnist | cifar10 | cifar100 | folder:/dir | shards:/dir/x-{000..009}.tar")
    parser.add_argument("--split", default="train")
    parser.add_argument("--root")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--scan", action="store_true", help="decode every image once (evaluation transform)")


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        cfg = DataConfig(dataset=args.dataset, root=args.root, image_size=args.image_size, in_chans=args.in_chans,
                         batch_size=args.batch_size, num_workers=args.num_workers)
        ds = build_dataset(cfg.dataset, args.split, root=cfg.root, in_chans=cfg.in_chans, max_pixels=cfg.max_pixels)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = getattr(ds, "num_samples", None) if not hasattr(ds, "__len__") else len(ds)
    print(f"{args.dataset} {args.split}: {size if size is not None else 'unknown number of'} samples, "
          f"{ds.num_classes} classes: {', '.join(ds.class_names[:10])}{' ...' if ds.num_classes > 10 else ''}")
    if args.scan:
        loader = build_loader(cfg, args.split, train=False, dataset=ds)
        start, n = time.perf_counter(), 0
        for _, y in loader:
            n += len(y)
        print(f"decoded {n} images in {time.perf_counter() - start:.1f} s; {loader.summary()}")
        for name in loader.bad_files:
            print(f"  bad: {name}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlab.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
