"""Images/s of self-supervised pre-training (MAE, MPP) against supervised training of the same encoder.

    python benchmarks/ssl_speed.py                      # the Fashion-MNIST recipes' encoder and decoder
    python benchmarks/ssl_speed.py --batch-size 128 --rounds 7
    OMP_WAIT_POLICY=PASSIVE python benchmarks/ssl_speed.py   # on a shared CPU (BENCHMARKS.md's numbers)
    python benchmarks/ssl_speed.py --smoke              # seconds: that it runs (the tests do this)

Each contender is the training step `vitlab train` takes for its objective (the recipes
fashion-mnist-mae and fashion-mnist-mpp, and classification with the same encoder and a 10-class head): bf16 autocast
forward and loss, backward, global-norm clipping, fused AdamW step, on random 1-channel images. The steps are
timed in turn (A B C A B C ...) in one process, so that a load change on a shared machine hits all alike;
the median of the rounds is reported. MAE's encoder sees a quarter of the patches, hence its speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitlab.data.preprocessing import from_data_config  # noqa: E402
from vitlab.models import create_model  # noqa: E402
from vitlab.training.config import load_config  # noqa: E402
from vitlab.training.objectives import TrainingModule, build_objective, head_classes  # noqa: E402
from vitlab.training.optim import build_optimizer  # noqa: E402
from vitlab.training.step import clip_gradients, forward_backward  # noqa: E402

RECIPES = {"supervised": "fashion-mnist-mpp-tune", "mae": "fashion-mnist-mae", "mpp": "fashion-mnist-mpp"}
ENCODER = "fashion-mnist-mae"  # all three train this encoder


def training_step(name: str, batch_size: int, device: torch.device):
    """A closure running one optimiser step of contender `name` on a fixed random batch."""
    cfg = load_config(RECIPES[name], check_paths=False)
    encoder = load_config(ENCODER, check_paths=False)
    torch.manual_seed(0)
    data = encoder.data
    model = create_model(encoder.model.name, image_size=data.image_size, in_chans=data.in_chans,
                         num_classes=head_classes(cfg.objective, 10), **encoder.model.overrides)
    objective = build_objective(cfg.objective, model_config=model.config,
                                preprocessing=from_data_config(cfg.data).to_dict(), loss=cfg.loss)
    network = TrainingModule(model, objective).to(device).train()
    optimizer = build_optimizer(network, cfg.optim, device_type=device.type)
    x = torch.randn(batch_size, data.in_chans, data.image_size, data.image_size, device=device).clamp(-1, 1)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        forward_backward(network, x, y, "bf16")
        clip_gradients(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def seconds(step, device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="steps per timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contenders", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--smoke", action="store_true", help="batch 4, one round of one step: that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.rounds, args.repeats = 4, 1, 1
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, bf16")
    steps = {name: training_step(name, args.batch_size, device) for name in args.contenders}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, step in steps.items():
            t = seconds(step, device, args.repeats)
            if r:
                times[name].append(t)
    rates = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    base = rates.get("supervised")
    for name, rate in rates.items():
        ratio = f"  {rate / base:.2f}x supervised" if base else ""
        print(f"{name:<11} {rate:8.0f} images/s  (median of {args.rounds} rounds of {args.repeats} steps){ratio}")


if __name__ == "__main__":
    main()
