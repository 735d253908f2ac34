"""torch.compile of the main job's stage-1 step (PatchDropout 0.8, batch 256, bf16): compile time, then eager and
compiled steps in interleaved rounds of 5 (BENCHMARKS.md, "The main job against the CNN"). Run as:
    OMP_NUM_THREADS=1 python benchmarks/compile_step.py
    python benchmarks/compile_step.py --smoke    # seconds: that it runs (the tests do this)
"""

import argparse
import time

import torch

import vitlab
from vitlab.bench import random_batch, training_step
from vitlab.training.optim import make_adamw

MAIN_JOB = dict(patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4)
SMOKE = dict(patch_size=4, width=32, depth=1, mlp_dim=64, num_heads=2)


def student(shape: dict):
    torch.manual_seed(0)
    return vitlab.create_model("ViT-Ti/16", **shape, classifier="gap", patch_dropout=0.8, in_chans=1,
                               image_size=28, num_classes=10).train()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a one-block model, batch 8, one step per round, compiled without code generation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape, batch, rounds, steps = (SMOKE, 8, 1, 1) if args.smoke else (MAIN_JOB, 256, 4, 5)
    x, y = random_batch(batch, 28, 10, "cpu", in_chans=1)
    a, b = student(shape), student(shape)
    compiled = torch.compile(b, backend="aot_eager" if args.smoke else "inductor")
    eager_step = training_step(a, make_adamw(a, lr=1e-3, weight_decay=0.05), x, y, "bf16", clip_grad_norm=1.0)
    compiled_step = training_step(compiled, make_adamw(b, lr=1e-3, weight_decay=0.05), x, y, "bf16",
                                  clip_grad_norm=1.0)
    start = time.perf_counter()
    compiled_step()
    compiled_step()
    print(f"compile + 2 steps: {time.perf_counter() - start:.1f} s")
    for _ in range(rounds):
        for name, step in (("eager", eager_step), ("compiled", compiled_step)):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            print(name, f"{(time.perf_counter() - start) / steps * 1000:.0f} ms/step", flush=True)


if __name__ == "__main__":
    main()
