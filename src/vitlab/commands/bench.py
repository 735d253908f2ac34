"""`vitlab bench`: vitlab's own training and inference throughput for a model, batch size and precision.

    vitlab bench --model ViT-B/16 --batch-size 32 --precision bf16 --compile
    vitlab bench --checkpoint runs/my-model --measure inference --fast

Images/s are medians over rounds; model FLOP/s are set against a matmul of the same dtype timed in the same
rounds (CPU) or the datasheet dense bf16 peak (listed GPUs). benchmarks/throughput.py runs the same
measurements beside Hugging Face transformers and timm.
"""

from __future__ import annotations

import copy
import os

import torch

from ..bench import (Result, Variant, datasheet_peak, format_bytes, interleave, matmul_step, model_flops,
                     peak_step_memory, random_batch, size_point, vitlab_step)
from ..runtime import precision_dtype, resolve_precision
from . import common

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="ViT-B/16", type=common.model_name,
                        help="registered model name (see `vitlab models`)")
    common.add_checkpoint_args(parser, required=False)
    parser.add_argument("--batch-size", type=common.integer(1), default=8)
    parser.add_argument("--image-size", type=common.image_size, default=None, help="default: the model's own")
    parser.add_argument("--measure", choices=("inference", "train", "both"), default="both",
                        help="what to time (default both)")
    common.add_alias(parser, "--task", "--measure", "measure", choices=("inference", "train", "both"))
    common.add_runtime_args(parser, precision="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (one graph)")
    parser.add_argument("--compile-mode", default=None, choices=COMPILE_MODES, help="torch.compile mode")
    parser.add_argument("--fast", action="store_true",
                        help="inference: vitlab.models.fast.fast_inference (weights cast once; packed on CPU)")
    parser.add_argument("--cuda-graph", action="store_true", help="inference on CUDA: replay a CUDA graph")
    parser.add_argument("--grad-checkpointing", action="store_true", help="training: recompute activations")
    parser.add_argument("--threads", type=common.integer(1, os.cpu_count() or 1),
                        help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--rounds", type=common.integer(1), default=3, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=common.integer(0), default=1, help="untimed rounds first")
    parser.add_argument("--repeats", type=common.integer(1), default=None,
                        help="steps per round (default: 1 CPU, 10 GPU)")
    parser.add_argument("--image-sizes", type=common.image_size, nargs="+", metavar="PX",
                        help="sweep input sizes (the paper's Figure 12): inference images/s at each size")
    parser.add_argument("--largest-batch", action="store_true",
                        help="with --image-sizes: also the largest batch whose weights and activations fit --memory-cap")
    parser.add_argument("--memory-cap", type=common.number(0, above=True), default=16.0, metavar="GIB",
                        help="memory for --largest-batch, in GiB (default 16: one TPUv3 core, as in the paper)")
    common.add_output_args(parser, out=None, json_help="print the results as JSON")


def build(args):
    if args.checkpoint:
        from ..checkpoints import load_pretrained
        return load_pretrained(args.checkpoint)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    return common.named_model(args.model, **overrides)


def run(args) -> int:
    if args.image_sizes:
        return sweep_image_sizes(args)
    device = common.resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = ("inference", "train") if args.measure == "both" else (args.measure,)
    repeats = args.repeats or (10 if device.type == "cuda" else 1)
    model = build(args).to(device)
    image_size = model.config.image_hw[0]
    common.check_batch_fits(args.batch_size, model.config.in_chans, image_size)
    x, y = random_batch(args.batch_size, image_size, max(model.num_classes, 1), device, model.config.in_chans)
    steps, results = {}, {}
    for task in tasks:
        variant = Variant(task, precision, args.compile, args.fast, args.cuda_graph, args.grad_checkpointing,
                          args.compile_mode)
        # each task its own copy: train/eval modes (and compiled graphs) must not flip between calls
        steps[task] = vitlab_step(copy.deepcopy(model), variant, x, y)
        results[task] = Result(task, args.batch_size, model_flops(model, image_size, task))
    peak = datasheet_peak(device)
    if peak is None:  # the CPU's practical peak: a matmul of the same dtype, timed between the model's steps
        mm, mm_flops = matmul_step(precision_dtype(precision), device)
        steps["matmul"] = mm
    times = interleave(steps, device, rounds=args.rounds, warmup=args.warmup, repeats=repeats)
    peak_flops = peak[1] if peak else mm_flops / sorted(times["matmul"])[len(times["matmul"]) // 2]
    for task, result in results.items():
        result.times = times[task]
        if task == "train":
            result.peak_memory = peak_step_memory(steps[task], device)
    report = {
        "model": args.checkpoint or args.model, "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
        "batch_size": args.batch_size, "image_size": image_size, "precision": precision,
        "compile": args.compile, "fast": args.fast, "cuda_graph": args.cuda_graph,
        "peak_flops": peak_flops, "peak_source": f"datasheet {peak[0]}" if peak else f"{precision} matmul",
        "results": {task: {"images_per_second": r.images_per_second, "ms_per_step": 1e3 * r.seconds,
                           "model_flops_per_second": r.flops_per_second,
                           "utilisation": r.flops_per_second / peak_flops, "peak_memory_bytes": r.peak_memory}
                    for task, r in results.items()},
    }
    if args.json:
        common.print_json(report)
    else:
        print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    lines = [f"{report['model']}: {report['parameters']:,} parameters, batch {report['batch_size']} at "
             f"{report['image_size']} px, {report['precision']}, compile={report['compile']}, "
             f"fast={report['fast']}, on {report['device']}",
             f"peak: {report['peak_flops'] / 1e9:,.0f} GFLOP/s ({report['peak_source']})",
             f"{'task':<10} {'images/s':>10} {'ms/step':>9} {'GFLOP/s':>9} {'of peak':>8} {'peak mem':>10}"]
    for task, r in report["results"].items():
        mem = format_bytes(r["peak_memory_bytes"])
        lines.append(f"{task:<10} {r['images_per_second']:>10.1f} {r['ms_per_step']:>9.1f} "
                     f"{r['model_flops_per_second'] / 1e9:>9.1f} {100 * r['utilisation']:>7.0f}% {mem:>10}")
    return "\n".join(lines)


def sweep_image_sizes(args) -> int:
    """Figure 12 for one model: images/s (and the largest batch under a memory cap) at each input size."""
    from ..errors import UsageError

    if args.checkpoint:
        raise UsageError("--image-sizes sweeps a registered architecture: give --model, not --checkpoint")
    device = common.resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if precision not in ("fp32", "bf16"):
        raise UsageError(f"--image-sizes measures fp32 or bf16, not {precision}")
    for size in args.image_sizes:  # every size checked before the first is timed
        common.named_config(args.model, {"image_size": "--image-sizes"}, image_size=size)
        common.check_batch_fits(args.batch_size, 3, size)
    rows = [size_point(model=args.model, image_size=size, batch=args.batch_size, memory_cap_gb=args.memory_cap,
                       precision=precision, device=str(device), max_batch=args.largest_batch, threads=args.threads)
            for size in args.image_sizes]
    if args.json:
        common.print_json({"model": args.model, "results": rows})
        return 0
    print(f"{args.model}: inference, batch {args.batch_size}, {precision}, {rows[0]['threads']} threads, "
          f"on {device}" + (f"; largest batch within {args.memory_cap:g} GiB" if args.largest_batch else ""))
    print(f"{'px':>5} {'GFLOPs/img':>11} {'images/s':>10}" + (f" {'MiB/img':>9} {'max batch':>10}" if args.largest_batch else ""))
    for r in rows:
        line = f"{r['image_size']:>5} {r['gflops_per_image']:>11.2f} {r['images_per_s']:>10.1f}"
        if args.largest_batch:
            line += f" {r['mb_per_image']:>9.2f} {r['max_batch']:>10,}"
        print(line)
    return 0
