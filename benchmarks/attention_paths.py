"""Which attention path is faster for vitlab in bf16 on this CPU and torch: explicit softmax(q k^T) v or SDPA.

    python benchmarks/attention_paths.py --threads 2 --rounds 5
    python benchmarks/attention_paths.py --smoke    # seconds: ViT-Ti/16 at 32 px, batch 2, one round
    python benchmarks/torch_versions.py --versions 2.13.0 2.14.1 --script benchmarks/attention_paths.py -- --threads 2

vitlab.models.vit.explicit_attention_is_faster picks the explicit path on CPU in bf16 for up to 256 tokens, a
choice measured on torch 2.13 (BENCHMARKS.md, "bf16 on CPU: what each change gives"): torch's fused bf16 CPU
kernel was the slower one. A newer torch may have changed that. This times the whole model both ways (the
choice forced each way), interleaved, in inference (autocast and the fast path) and in a training step.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vitlab  # noqa: E402
from vitlab.bench import Variant, interleave, median, random_batch, vitlab_step  # noqa: E402
from vitlab.models import vit  # noqa: E402
from vitlab.models.fast import onednn_bf16_available  # noqa: E402

CHOICE = vit.explicit_attention_is_faster


def forced(explicit: bool, step):
    """`step` run with the attention choice forced: explicit where vitlab would choose it, else SDPA."""
    def run():
        vit.explicit_attention_is_faster = (lambda q: CHOICE(q)) if explicit else (lambda q: False)
        try:
            return step()
        finally:
            vit.explicit_attention_is_faster = CHOICE
    return run


def cases(models, batch_size: int):
    variants = {"inference autocast": Variant("inference", "bf16"), "train": Variant("train", "bf16")}
    if onednn_bf16_available():
        variants["inference fast path"] = Variant("inference", "bf16", fast=True)
    for name in models:
        for label, variant in variants.items():
            yield name, label, variant, batch_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-Ti/16", "ViT-S/16", "ViT-B/16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="ViT-Ti/16 at 32 px, batch 2, one round: that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.image_size, args.batch_size, args.rounds = ["ViT-Ti/16"], 32, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads,"
          f" native bf16: {onednn_bf16_available()}")
    print("| model | step | explicit ms | SDPA ms | SDPA ÷ explicit time |\n|---|---|---|---|---|")
    for name, label, variant, batch in cases(args.models, args.batch_size):
        torch.manual_seed(0)
        model = vitlab.create_model(name, image_size=args.image_size)
        x, y = random_batch(batch, args.image_size, model.num_classes, cpu)
        steps = {explicit: forced(explicit, vitlab_step(copy.deepcopy(model), variant, x, y))
                 for explicit in (True, False)}
        for step in steps.values():
            step()  # the first call (weights cast, packed, allocator warm)
        times = interleave({str(k): v for k, v in steps.items()}, cpu, rounds=args.rounds, warmup=1)
        explicit, sdpa = median(times["True"]) * 1e3, median(times["False"]) * 1e3
        print(f"| {name} | {label} | {explicit:.1f} | {sdpa:.1f} | {sdpa / explicit:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
