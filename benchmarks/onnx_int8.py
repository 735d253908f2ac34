"""ONNX export and int8: accuracy on Fashion-MNIST and ViT-B/16 images/s beside vitlab's torch paths.

    python benchmarks/onnx_int8.py --checkpoint runs/fashion-mnist --threads 2
    python benchmarks/onnx_int8.py --skip-accuracy --batch-size 8 --rounds 5
    python benchmarks/onnx_int8.py --smoke      # seconds: that it runs, on a tiny random model (the tests do this)

1. Accuracy (--checkpoint, a Fashion-MNIST model): top-1 on the 10,000 test images of the torch model (fp32
   and the bf16 fast path) and of its ONNX export in onnxruntime (fp32 and dynamic int8), and the largest
   |logit| difference between ONNX fp32 and torch fp32 (the parity the tests hold to 1e-4).
2. Speed: ViT-B/16 at 224 px (random weights), a fixed batch, images/s as the median of interleaved rounds of
   torch fp32, torch bf16 (vitlab.models.fast.fast_inference: bf16 weights, oneDNN-packed), ONNX fp32 and
   ONNX int8 (onnxruntime's CPU provider, every graph optimisation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import vitlab  # noqa: E402
from vitlab.models.fast import fast_inference  # noqa: E402
from vitlab.serving.onnx import export_onnx, load_session  # noqa: E402
from vitlab.bench import interleave, median  # noqa: E402


def onnx_runner(session):
    return lambda x: torch.from_numpy(session.run(["logits"], {"pixels": x.numpy()})[0])


def accuracy(checkpoint: str, workdir: Path, batch_size: int, threads: int, split: str = "test") -> dict:
    from vitlab.evaluation import EvalBatches
    from vitlab.evaluation.batches import model_preprocessing

    model = vitlab.load_pretrained(checkpoint).eval()
    from vitlab.data import build_dataset

    dataset = build_dataset("fashion_mnist", split, in_chans=model.config.in_chans)
    paths = {"fp32": export_onnx(model, workdir / "fp32.onnx"),
             "int8": export_onnx(model, workdir / "int8.onnx", quantize="int8")}
    runners = {"torch fp32": model, "torch bf16 (fast path)": fast_inference(model, "bf16"),
               **{f"onnx {k}": onnx_runner(load_session(p, threads)) for k, p in paths.items()}}
    correct = dict.fromkeys(runners, 0)
    total, parity = 0, 0.0
    batches = EvalBatches(dataset, preprocessing=model_preprocessing(model), batch_size=batch_size)
    with torch.inference_mode():
        for x, y, _ in batches:
            logits = {name: run(x).float() for name, run in runners.items()}
            for name, out in logits.items():
                correct[name] += int((out.argmax(1) == y).sum())
            parity = max(parity, float((logits["onnx fp32"] - logits["torch fp32"]).abs().max()))
            total += len(y)
    return {"images": total, "top1": {k: round(100 * v / total, 2) for k, v in correct.items()},
            "onnx_fp32_max_abs_logit_diff": parity,
            "onnx_bytes": {k: p.stat().st_size for k, p in paths.items()}}


def speed(model_name: str, workdir: Path, batch_size: int, rounds: int, threads: int, **overrides) -> dict:
    model = vitlab.create_model(model_name, **overrides).eval()
    x = torch.randn(batch_size, model.config.in_chans, *model.config.image_hw)
    fast = fast_inference(model, "bf16")
    sessions = {"onnx fp32": load_session(export_onnx(model, workdir / "b16.onnx"), threads),
                "onnx int8": load_session(export_onnx(model, workdir / "b16-int8.onnx", quantize="int8"), threads)}

    def torch_call(m):
        def call():
            with torch.inference_mode():
                return m(x)
        return call

    fns = {"torch fp32": torch_call(model), "torch bf16 (fast path)": torch_call(fast),
           **{k: (lambda s=s: s.run(["logits"], {"pixels": x.numpy()})) for k, s in sessions.items()}}
    times = interleave(fns, torch.device("cpu"), rounds=rounds, warmup=1)
    ips = {k: round(batch_size / median(v), 2) for k, v in times.items()}
    fastest_torch = max(v for k, v in ips.items() if k.startswith("torch"))
    return {"model": model_name, "batch_size": batch_size, "images_per_s": ips,
            "int8_vs_fastest_torch": round(ips["onnx int8"] / fastest_torch, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a Fashion-MNIST model for the accuracy part")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="a tiny random model on 64 Fashion-MNIST test images "
                        "and on random images, batch 2, one round: that it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads}
    split, overrides = "test", {}
    with tempfile.TemporaryDirectory(prefix="vitlab-onnx-bench-") as tmp:
        if args.smoke:  # the tests' tiny random models
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import tiny
            from serving_support import tiny_checkpoint

            args.checkpoint, args.model, args.batch_size, args.rounds = tiny_checkpoint(Path(tmp) / "tiny"), \
                "ViT-Ti/16", 2, 1
            split, overrides = "test[:64]", tiny(patch_size=8, image_size=16)
        if args.checkpoint and not args.skip_accuracy:
            result["accuracy"] = accuracy(args.checkpoint, Path(tmp), 256, args.threads, split)
            print(json.dumps(result["accuracy"]), flush=True)
        if not args.skip_speed:
            result["speed"] = speed(args.model, Path(tmp), args.batch_size, args.rounds, args.threads, **overrides)
            print(json.dumps(result["speed"]), flush=True)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
