"""Data-pipeline throughput.

1. Decoded + augmented 224 px training crops per second in ONE process (= per loader worker),
   vitlab's CropResize against a plain Pillow pipeline (open, convert RGB, random-resized-crop,
   flip, to float tensor), on realistic JPEGs (500x375, quality 90) this script writes itself.
   The two run in alternating rounds over the same files; the median round counts. Rates are per CPU
   second of the process (time.process_time), so other load on a shared machine does not skew them.
   Each batch of 32 is stacked as a loader worker's collate does (float32 is 4x the bytes of uint8).
2. The Fashion-MNIST training loader (in-memory batched path), 28 px, batch 256, wall clock.

    PYTHONPATH=src python benchmarks/data.py [--images 128] [--rounds 5] [--photo-sizes 500x375 1024x768]
    PYTHONPATH=src python benchmarks/data.py --smoke     # seconds: that it runs (the tests do this)
"""
import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitlab.data import DataConfig, build_loader
from vitlab.data.transforms import CropResize, sample_crop_boxes


def write_jpegs(directory: Path, n: int, size=(500, 375), seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth large-scale structure plus fine texture, quality 90."""
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        texture = rng.normal(0, 10, (height, width, 3))
        img = Image.fromarray(np.clip(np.asarray(base) + texture, 0, 255).astype(np.uint8))
        paths.append(directory / f"{width}x{height}-{i:04d}.jpg")
        img.save(paths[-1], "JPEG", quality=90)
    return paths


def plain_pillow(path: Path, rng: np.random.Generator, size: int = 224) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    top, left, h, w = sample_crop_boxes(rng, 1, img.height, img.width)[0]
    img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    # "to tensor" as torchvision's ToTensor does it: contiguous C x H x W float in [0, 1].
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)


def vitlab_crop(path: Path, rng: np.random.Generator, transform=CropResize(224, 3)) -> torch.Tensor:
    return transform(Image.open(io.BytesIO(path.read_bytes())), rng, str(path))  # as FolderDataset.open


BATCH = 32


def images_per_second(fn, paths, seed) -> float:
    """Per CPU second of this process: the machine may be shared, and a loader worker is one process."""
    rng = np.random.default_rng(seed)
    start = time.process_time()
    for i in range(0, len(paths), BATCH):
        torch.stack([fn(p, rng) for p in paths[i : i + BATCH]])  # a worker's collate
    return len(paths) / (time.process_time() - start)


def fashion_mnist_loader(split: str, **augment) -> float:
    """One epoch of the training loader, after a warm-up batch; wall-clock images/s."""
    cfg = DataConfig(dataset="fashion_mnist", image_size=28, in_chans=1, batch_size=256, **augment)
    loader = build_loader(cfg, split, train=True)
    next(iter(loader))  # moves the data set to the device once
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - start)


def compare(size, args):
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, size)
        for fn in (plain_pillow, vitlab_crop):  # warm-up
            images_per_second(fn, paths[:8], 0)
        rates = {"plain Pillow": [], "vitlab": []}
        for r in range(args.rounds):
            rates["plain Pillow"].append(images_per_second(plain_pillow, paths, r))
            rates["vitlab"].append(images_per_second(vitlab_crop, paths, r))
    plain, ours = (statistics.median(v) for v in rates.values())
    print(f"224 px train crops from {size[0]}x{size[1]} q90 JPEGs, one process, {args.threads} torch thread(s), "
          f"median of {args.rounds} rounds x {args.images} images, per CPU second")
    print(f"  plain Pillow pipeline : {plain:7.1f} images/s   (rounds: {' '.join(f'{v:.0f}' for v in rates['plain Pillow'])})")
    print(f"  vitlab CropResize     : {ours:7.1f} images/s   (rounds: {' '.join(f'{v:.0f}' for v in rates['vitlab'])})")
    print(f"  speed-up              : {ours / plain:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photo-sizes", nargs="+", default=["500x375", "1024x768"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a loader worker uses 1)")
    parser.add_argument("--fashion-mnist-split", default="train", help="the loader's epoch (a split spec)")
    parser.add_argument("--smoke", action="store_true",
                        help="8 small JPEGs, one round, 512 Fashion-MNIST images: that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.rounds, args.photo_sizes, args.fashion_mnist_split = 8, 1, ["64x48"], "train[:512]"
    torch.set_num_threads(args.threads)
    for size in args.photo_sizes:
        compare(tuple(int(v) for v in size.split("x")), args)
    split = args.fashion_mnist_split
    print(f"Fashion-MNIST {split} loader, 28 px, batch 256, CPU, {args.threads} torch thread(s):")
    print(f"  inception crop + flip              : {fashion_mnist_loader(split):9,.0f} images/s")
    deit = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, random_erasing=0.25)
    print(f"  + Mixup/CutMix, erasing, smoothing : {fashion_mnist_loader(split, **deit):9,.0f} images/s")


if __name__ == "__main__":
    main()
