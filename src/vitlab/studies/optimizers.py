"""The optimisers the seed notes compare (SGD, momentum, Adagrad, Adam), each at its best learning rate.

The paper (Appendix D.1) found Adam slightly better than SGD with momentum for pre-training ResNets on JFT,
and used Adam for every pre-training. Here a small learning-rate sweep per optimiser, accuracy at equal steps,
and the loss curves of each optimiser's best rate.
"""

from __future__ import annotations

from .core import MAIN_VIT, TINY_VIT, Run, Study, fashion_mnist_run, paper_run, steps_for, scale_of
from .measure import loss_curve
from .plots import figure, save
from .report import markdown_table, pct

BASE = dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)
# (vitlab optimizer, extra optim settings, learning rates to try)
OPTIMIZERS = {
    "sgd": ("sgd", {"momentum": 0.0}, [0.03, 0.1, 0.3]),
    "momentum": ("sgd", {"momentum": 0.9}, [0.003, 0.01, 0.03]),
    "adagrad": ("adagrad", {}, [0.003, 0.01, 0.03]),
    "adam": ("adam", {}, [3e-4, 1e-3, 3e-3]),
}
IMAGES = {"quick": 64 * 15, "default": 20_000}


def grid(size: str) -> list[Run]:
    base = TINY_VIT if size == "quick" else BASE
    batch, eval_split = scale_of(size)
    runs = []
    for label, (name, extra, lrs) in OPTIMIZERS.items():
        for lr in (lrs[1:2] if size == "quick" else lrs):
            if size == "paper":
                config = paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096, lr=lr)
            else:
                config = fashion_mnist_run(overrides=base, lr=lr, batch_size=batch, steps=steps_for(IMAGES[size], batch),
                                           eval_split=eval_split)
            config["optim"] = {"name": name, "lr": lr, "weight_decay": 0.0, **extra}
            runs.append(Run(f"{label}-lr{lr:g}", config, {"optimizer": label, "lr": lr}, fewshot=False))
    return runs


def best_per_optimizer(rows: list[dict]) -> dict[str, dict]:
    best = {}
    for r in rows:
        if r.get("test_top1") is not None and (r["optimizer"] not in best
                                                or r["test_top1"] > best[r["optimizer"]]["test_top1"]):
            best[r["optimizer"]] = r
    return best


def draw(rows: list[dict], path) -> None:
    fig, (left, right) = figure(2)
    for label, row in best_per_optimizer(rows).items():
        curve = loss_curve(path.parent / row["run_dir"])
        if curve:
            left.plot(*zip(*curve), label=f"{label} (lr {row['lr']:g})")
    left.set(xlabel="step", ylabel="training loss", yscale="log")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for label in OPTIMIZERS:
        pts = sorted((r["lr"], 100 * r["test_top1"]) for r in rows if r["optimizer"] == label)
        if pts:
            right.plot(*zip(*pts), marker="o", label=label)
    right.set(xscale="log", xlabel="learning rate", ylabel="test top-1 (%)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    save(fig, path, "Optimisers at equal steps, each at its best learning rate")


def summarise(rows: list[dict]) -> str:
    best = best_per_optimizer(rows)
    lines = [[label] + [("**" if best.get(label) is r else "") + pct(r["test_top1"]) + ("**" if best.get(label) is r else "")
                        + f" (lr {r['lr']:g})" for r in rows if r["optimizer"] == label]
             for label in OPTIMIZERS if label in best]
    width = max(len(line) for line in lines) - 1
    return markdown_table(["optimiser"] + [f"run {i + 1}: top-1 %" for i in range(width)], lines) + \
        "\n\nBold: the optimiser's best learning rate (its loss curve is drawn)."


STUDY = Study(
    name="optimizers",
    title="SGD, momentum, Adagrad and Adam at equal steps",
    paper="Appendix D.1 (SGD against Adam) and the seed notes' comparison",
    question="How much does the optimiser matter for training a ViT from scratch, each at its best learning rate?",
    grid=grid, draw=draw, summarise=summarise,
    budget={"quick": "15 steps of 64, one learning rate per optimiser.",
            "default": f"{IMAGES['default']:,} images per run at batch 128, three learning rates per optimiser, "
                       "no weight decay, cosine, bf16.",
            "paper": "ViT-B/16 on JFT-300M per optimiser and learning rate."},
    paper_numbers="""
Appendix D.1 (ResNets pre-trained on JFT-300M, then transferred): Adam pre-training is slightly better than SGD
with momentum on average, which is why the paper pre-trains every model, ResNets included, with Adam. The
paper compares no other optimisers; Adagrad and plain SGD are here for the seed notes' comparison.
""")
