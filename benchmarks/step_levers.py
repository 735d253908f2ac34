"""The main job's training step on this CPU, lever by lever, side by side in one process.

    python benchmarks/step_levers.py                 # both stages: bf16 autocast, fp32, fp32 compiled
    python benchmarks/step_levers.py --profile       # also where one fp32 stage-1 step's time goes
    python benchmarks/step_levers.py --curve-steps 200   # compiled vs eager loss on the same real batches
    python benchmarks/step_levers.py --smoke         # seconds: that it runs (the tests do this)

Stage 1 is the recipe `fashion-mnist` (PatchDropout 0.8, batch 256), stage 2 `fashion-mnist-tune` (every token,
batch 128). Every lever gets its own copy of the same initial model and its own AdamW; the steps run
interleaved (A B C A B C ...) on one random batch, --rounds rounds of --steps steps after a warm-up round, and
the table gives the median images/s and its ratio to the first row. torch.compile's compile time (the first
calls, from this process's inductor cache: clear it for a cold figure) is reported on its own, since the main
job's 10 minutes would have to pay it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vitlab  # noqa: E402
from vitlab.bench import interleave, median, random_batch, training_step  # noqa: E402
from vitlab.training.optim import make_adamw  # noqa: E402

MAIN_JOB = dict(patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4)
SMOKE = dict(patch_size=4, width=32, depth=1, mlp_dim=64, num_heads=2)
STAGES = {"stage 1 (PatchDropout 0.8)": (0.8, 256), "stage 2 (every token)": (0.0, 128)}


def main_job_model(shape: dict, patch_dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return vitlab.create_model("ViT-Ti/16", **shape, classifier="gap", patch_dropout=patch_dropout, in_chans=1,
                               image_size=28, num_classes=10).train()


def levers(model: torch.nn.Module, smoke: bool) -> dict[str, tuple[torch.nn.Module, torch.nn.Module, str]]:
    """name -> (the module called, the module whose parameters train, precision)."""
    fp32, compiled = copy.deepcopy(model), copy.deepcopy(model)
    backend = "aot_eager" if smoke else "inductor"
    return {"bf16 autocast": (model, model, "bf16"), "fp32": (fp32, fp32, "fp32"),
            "fp32, torch.compile": (torch.compile(compiled, backend=backend), compiled, "fp32")}


def step_of(called, trained, precision: str, x, y):
    return training_step(called, make_adamw(trained, lr=1e-3, weight_decay=0.05), x, y, precision,
                         clip_grad_norm=1.0)


def measure_stage(name: str, patch_dropout: float, batch: int, args) -> None:
    shape = SMOKE if args.smoke else MAIN_JOB
    x, y = random_batch(batch, 28, 10, "cpu", in_chans=1)
    steps = {lever: step_of(called, trained, precision, x, y)
             for lever, (called, trained, precision) in levers(main_job_model(shape, patch_dropout), args.smoke).items()}
    compile_s = {}
    for lever, step in steps.items():  # first calls: compilation, allocator warm-up
        start = time.perf_counter()
        step(), step()
        compile_s[lever] = time.perf_counter() - start
    times = interleave(steps, torch.device("cpu"), rounds=args.rounds, warmup=0, repeats=args.steps)
    base = batch / median(times[next(iter(times))])
    print(f"\n{name}, batch {batch}, {torch.get_num_threads()} threads, median of {args.rounds} rounds of "
          f"{args.steps} steps")
    print("| lever | images/s | x first row | first two steps (s) |\n|---|---|---|---|")
    for lever, seconds in times.items():
        rate = batch / median(seconds)
        print(f"| {lever} | {rate:,.0f} | {rate / base:.2f} | {compile_s[lever]:.1f} |")


def profile_stage(patch_dropout: float, batch: int, smoke: bool) -> None:
    model = main_job_model(SMOKE if smoke else MAIN_JOB, patch_dropout)
    x, y = random_batch(batch, 28, 10, "cpu", in_chans=1)
    step = step_of(model, model, "fp32", x, y)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2 if smoke else 5):
            step()
    print(f"\nprofile of the fp32 step (PatchDropout {patch_dropout}, batch {batch}), self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def loss_curves(steps: int, smoke: bool) -> None:
    """Eager against compiled fp32 on the same real Fashion-MNIST batches: the largest loss difference."""
    from vitlab.data import fashion_mnist

    data = fashion_mnist.load("train", in_chans=1)
    model = main_job_model(SMOKE if smoke else MAIN_JOB, 0.0)
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    runs = {"eager": (eager, make_adamw(eager, lr=1e-3, weight_decay=0.05)),
            "compiled": (torch.compile(compiled, backend="aot_eager" if smoke else "inductor"),
                         make_adamw(compiled, lr=1e-3, weight_decay=0.05))}
    losses = {name: [] for name in runs}
    for i in range(steps):
        x = data.images[i * 128:(i + 1) * 128].float() / 255.0
        y = data.labels[i * 128:(i + 1) * 128]
        for name, (called, optimizer) in runs.items():
            torch.manual_seed(i)  # the same dropout draws for both
            loss = training_step(called, optimizer, x, y, "fp32", clip_grad_norm=1.0)()
            losses[name].append(float(loss))
    gap = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"]))
    print(f"\nloss over {steps} steps of real batches: eager {losses['eager'][0]:.3f} -> {losses['eager'][-1]:.3f}, "
          f"compiled {losses['compiled'][0]:.3f} -> {losses['compiled'][-1]:.3f}; largest difference {gap:.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--curve-steps", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a one-block model, one round of one step")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.curve_steps = 1, 1, min(args.curve_steps, 2)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, (patch_dropout, batch) in STAGES.items():
        measure_stage(name, patch_dropout, 8 if args.smoke else batch, args)
    if args.profile:
        profile_stage(0.8, 8 if args.smoke else 256, args.smoke)
    if args.curve_steps:
        loss_curves(args.curve_steps, args.smoke)


if __name__ == "__main__":
    main()
