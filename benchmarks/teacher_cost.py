"""Per-step cost of a distillation teacher on the main job's student (BENCHMARKS.md, "Distillation on Fashion-MNIST").

The student's training step (PatchDropout 0.8, [class] + distillation token, batch 256, bf16) and two teachers'
bf16 forwards on the same batch, timed interleaved over 5 rounds on one thread; medians. Run as in BENCHMARKS.md:
    OMP_NUM_THREADS=1 python benchmarks/teacher_cost.py
    python benchmarks/teacher_cost.py --smoke    # seconds: that it runs (the tests do this)
"""

import argparse
import statistics
import time

import torch

import vitlab
from vitlab.bench import random_batch, training_step
from vitlab.training.optim import make_adamw

MAIN_JOB = dict(patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4, in_chans=1, image_size=28,
                num_classes=10)


def contenders(batch: int) -> dict:
    """name -> a call: the student's training step, and each teacher's forward, on one batch."""
    torch.manual_seed(0)
    student = vitlab.create_model("ViT-Ti/16", **MAIN_JOB, classifier="token", distill_token=True,
                                  patch_dropout=0.8).train()
    bit = vitlab.create_model("BiT-R50x1", layers=(1, 1, 1), in_chans=1, image_size=28, num_classes=10).eval()
    vit = vitlab.create_model("ViT-Ti/16", **MAIN_JOB, classifier="gap").eval()
    x, y = random_batch(batch, 28, 10, "cpu", in_chans=1)
    step = training_step(lambda images: student.forward_heads(images)[0],
                         make_adamw(student, lr=1e-3, weight_decay=0.05), x, y, "bf16", clip_grad_norm=1.0)

    def forward(model):
        def call():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return call

    return {"student step (PD 0.8, 2 tokens)": step, "BiT-R50x1 [1,1,1] teacher forward": forward(bit),
            "ViT main-job teacher forward (49 tokens)": forward(vit)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="batch 8, one round: that it runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch, rounds = (8, 1) if args.smoke else (256, 5)
    fns = contenders(batch)
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    for k, v in times.items():
        print(f"{k}: median {statistics.median(v) * 1000:.0f} ms per batch of {batch}")


if __name__ == "__main__":
    main()
