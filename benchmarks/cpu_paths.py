"""Which bf16/fp32 inference path is fastest on this CPU, and where a ViT's time goes.

    python benchmarks/cpu_paths.py --model ViT-B/16 --precision bf16 --threads 1
    python benchmarks/cpu_paths.py --model ViT-S/16 --precision bf16 --max-autotune
    python benchmarks/cpu_paths.py --smoke     # seconds: that it runs (the tests do this)

Interleaved medians, as in throughput.py, of: a 2048^3 matmul (the peak), the model under autocast, the
model with weights cast once (fast_inference, pack=False), with weights also oneDNN-packed and GELU fused
(fast_inference), and torch.compile with weight freezing (optionally max-autotune); then a profile of the
fastest eager path split into matmuls, attention and the rest.
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
from vitlab.bench import inference_step, interleave, matmul_step, median, model_flops, random_batch  # noqa: E402
from vitlab.models.fast import compile_model, fast_inference  # noqa: E402
from vitlab.runtime import precision_dtype  # noqa: E402


def profile_split(fn) -> dict[str, float]:
    """Seconds of one call spent in the dense layers' matmuls, in attention (fused or bmm + softmax), elsewhere."""
    from torch.profiler import profile
    with profile() as prof:
        fn()
    split = {"dense layers": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        name, seconds = event.key, event.self_cpu_time_total / 1e6
        if any(k in name for k in ("attention", "bmm", "softmax")):
            split["attention"] += seconds
        elif any(k in name for k in ("linear", "addmm", "aten::mm")):
            split["dense layers"] += seconds
        else:
            split["other"] += seconds
    return split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B/16")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--max-autotune", action="store_true", help="also compile with mode='max-autotune' (slow)")
    p.add_argument("--smoke", action="store_true", help="ViT-Ti/16 at 32 px, batch 1, one round, no compile, a "
                   "256^3 matmul: that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.image_size, args.batch_size, args.rounds = "ViT-Ti/16", 32, 1, 1
        args.no_compile, args.max_autotune = True, False
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model = vitlab.create_model(args.model, image_size=args.image_size).eval()
    x, _ = random_batch(args.batch_size, args.image_size, 1000, cpu)
    mm, mm_flops = matmul_step(precision_dtype(args.precision), cpu, n=256 if args.smoke else 2048)
    steps = {"matmul": mm, "autocast" if args.precision == "bf16" else "eager": inference_step(model, x, args.precision)}
    if args.precision == "bf16":
        steps["weights cast once"] = inference_step(fast_inference(model, pack=False), x, "fp32")
        steps["cast + oneDNN packed + GELU fused"] = inference_step(fast_inference(model), x, "fp32")
    compiled = {} if args.no_compile else {"compile (freezing)": None}
    if args.max_autotune:
        compiled["compile (freezing, max-autotune)"] = "max-autotune"
    for name, mode in compiled.items():
        step = inference_step(compile_model(copy.deepcopy(model), inference=True, mode=mode), x, args.precision)
        start = time.perf_counter()
        step()
        print(f"{name}: first call (compiling) {time.perf_counter() - start:.0f} s", flush=True)
        steps[name] = step
    times = interleave(steps, cpu, rounds=args.rounds, warmup=1)
    peak = mm_flops / median(times.pop("matmul"))
    flops = model_flops(model, args.image_size, "inference") * args.batch_size
    print(f"{args.model} {args.precision} {args.image_size} px batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s")
    for name, t in times.items():
        print(f"  {name:<36} {1e3 * median(t):8.0f} ms  {flops / median(t) / 1e9:7.1f} GFLOP/s  "
              f"{100 * flops / median(t) / peak:5.1f}% of peak")
    eager = [n for n in times if not n.startswith("compile")]
    fastest = min(eager, key=lambda n: median(times[n]))
    with torch.inference_mode():
        split = profile_split(steps[fastest])
    total = sum(split.values())
    print(f"  profile of '{fastest}': " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in split.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
