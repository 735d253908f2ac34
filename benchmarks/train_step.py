"""Images/s of the main job's training step (the recipe fashion-mnist) as the recipe's knobs change.

    python benchmarks/train_step.py                                   # the stage-1 recipe (patch_dropout 0.8)
    python benchmarks/train_step.py --patch-dropout 0 0.5 0.75 0.8    # one line per value
    python benchmarks/train_step.py --width 192 --batch-size 64 --image-size 16
    python benchmarks/train_step.py --smoke                           # seconds: that it runs (the tests do this)

One optimiser step as `vitlab train` takes it: forward and backward in the recipe's precision (`--precision auto`:
bf16 autocast where the CPU has bf16 instructions, fp32 elsewhere), cross-entropy (label smoothing
as asked), global-norm clipping, fused AdamW, on random 1-channel images. It times steps after a warm-up, with the
threads torch was given (OMP_NUM_THREADS); the choices of BENCHMARKS.md ("Fashion-MNIST recipe") came from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vitlab  # noqa: E402
from vitlab.bench import random_batch, time_call, training_step  # noqa: E402
from vitlab.runtime import resolve_precision  # noqa: E402
from vitlab.training.optim import make_adamw  # noqa: E402


def time_steps(model, batch_size: int, image_size: int, steps: int, label_smoothing: float, warmup: int,
               precision: str) -> float:
    """Seconds per optimiser step, averaged over `steps` after `warmup` untimed ones."""
    x, y = random_batch(batch_size, image_size, 10, "cpu", in_chans=1)
    step = training_step(model, make_adamw(model, lr=1e-3, weight_decay=0.05), x, y, precision,
                         label_smoothing=label_smoothing, clip_grad_norm=1.0)
    time_call(step, x.device, warmup)
    return time_call(step, x.device, steps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-dropout", type=float, nargs="+", default=[0.8])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto: bf16 where the CPU has bf16 instructions, else fp32 (as the recipes)")
    parser.add_argument("--smoke", action="store_true", help="width 32, depth 1, batch 8, one step: that it runs")
    args = parser.parse_args(argv)
    precision = resolve_precision(args.precision, "cpu")
    if args.smoke:
        args.width, args.depth, args.batch_size, args.steps, args.warmup = 32, 1, 8, 1, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {precision}")
    for rate in args.patch_dropout:
        model = vitlab.create_model(
            "ViT-Ti/16", patch_size=4, width=args.width, depth=args.depth, mlp_dim=4 * args.width,
            num_heads=max(args.width // 32, 1), classifier="gap", patch_dropout=rate, in_chans=1,
            image_size=args.image_size, num_classes=10).train()
        seconds = time_steps(model, args.batch_size, args.image_size, args.steps, args.label_smoothing, args.warmup,
                             precision)
        print(f"patch_dropout {rate:<4}  width {args.width}  depth {args.depth}  {args.image_size} px  "
              f"batch {args.batch_size}: {seconds * 1000:6.1f} ms/step  {args.batch_size / seconds:6.0f} images/s")


if __name__ == "__main__":
    main()
