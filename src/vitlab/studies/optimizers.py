"""The optimisers the seed notes compare (SGD, momentum, Adagrad, Adam), each at its best learning rate, and
the paper's own comparison (Appendix D.1: Adam against SGD with momentum for ResNets).

Each optimiser gets a learning-rate sweep (one seed) that is extended until its best rate on the held-out
split is inside the sweep; then a second seed at that rate gives the spread. A ViT for the seed notes' four
optimisers, a BiT ResNet for the paper's two.
"""

from __future__ import annotations

from .core import (LONGER, SMALL_VIT, TINY_VIT, Finding, Run, Study, best_rates, epochs_to_steps, fashion_mnist_run,
                   paper_run, rates_beyond_edges, scale_of, split_longer)
from .families import COMPARABLE, TINY
from .measure import loss_curve
from .plots import figure, save
from .report import markdown_table, pct, seed_noise, spread_of, verdict_better

# arm -> (model family, vitlab optimizer, extra optim settings, learning rates to start from)
ARMS = {
    "ViT sgd": ("ViT", "sgd", {"momentum": 0.0}, [0.1, 0.3, 1.0]),
    "ViT momentum": ("ViT", "sgd", {"momentum": 0.9}, [0.01, 0.03, 0.1]),
    "ViT adagrad": ("ViT", "adagrad", {}, [0.001, 0.003, 0.01]),
    "ViT adam": ("ViT", "adam", {}, [3e-4, 1e-3, 3e-3]),
    "BiT momentum": ("BiT", "sgd", {"momentum": 0.9}, [0.03, 0.1, 0.3]),
    "BiT adam": ("BiT", "adam", {}, [1e-3, 3e-3, 1e-2]),
}
EPOCHS, QUICK_STEPS, SEEDS = 1.5, 15, (0, 1)
# (winner, loser, the paper's claim); the two arms of a claim not reproduced are trained LONGER times longer
CLAIMS = [("BiT adam", "BiT momentum", "Adam pre-trains ResNets slightly better than SGD with momentum (D.1)"),
          ("ViT adam", "ViT momentum", "Adam trains the ViT better than SGD with momentum (the paper's choice)"),
          ("ViT adam", "ViT sgd", "Adam trains the ViT better than plain SGD (seed notes)")]


def grid(size: str) -> list[Run]:
    if size == "paper":
        return [run_at(size, arm, lr) for arm, (family, *_, lrs) in ARMS.items() if family == "ViT" for lr in lrs]
    if size == "quick":
        return [run_at(size, arm, lrs[1]) for arm, (*_, lrs) in ARMS.items()]
    return [run_at(size, arm, lr) for arm, (*_, lrs) in ARMS.items() for lr in lrs]


def run_at(size: str, arm: str, lr: float, seed: int = 0, epochs: float = EPOCHS) -> Run:
    family, name, extra, _ = ARMS[arm]
    if size == "paper":
        config = paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096, lr=lr)
        test_split = None
    else:
        scale = scale_of(size)
        model, overrides = (TINY if size == "quick" else COMPARABLE)[family] if family == "BiT" else (
            "ViT-Ti/16", TINY_VIT if size == "quick" else SMALL_VIT)
        steps = QUICK_STEPS if size == "quick" else epochs_to_steps(epochs, scale.batch_size)
        config = fashion_mnist_run(model=model, overrides=overrides, lr=lr, steps=steps, scale=scale, seed=seed)
        test_split = scale.test_split
    config["optim"] = {"name": name, "lr": lr, "weight_decay": 0.0, **extra}
    name = f"{arm.lower().replace(' ', '-')}-lr{lr:g}"
    tags = {"family": family, "optimizer": arm, "lr": lr, "seed": seed}
    if epochs != EPOCHS:
        name, tags = f"{name}-x{LONGER}", {**tags, "epochs": epochs}
    elif seed:
        name += f"-s{seed}"
    return Run(name, config, tags, fewshot=False, test_split=test_split)


def extend(size: str, rows: list[dict]) -> list[Run]:
    """Past an edge of a sweep first; once an arm's best rate is inside its sweep, the other seeds there; the two
    arms of a claim not reproduced, at their best rates, trained longer."""
    if size != "default":
        return []
    rows = split_longer(rows, EPOCHS)[0]
    first = [r for r in rows if r["seed"] == 0]
    beyond, best = rates_beyond_edges(first, "optimizer"), best_rates(first, "optimizer")
    runs = [run_at(size, arm, lr) for arm, lr in beyond.items()]
    for arm, (lr, _) in best.items():
        if arm not in beyond:
            runs += [run_at(size, arm, lr, seed) for seed in SEEDS[1:]]
    retried = dict.fromkeys(arm for winner, loser, claim in CLAIMS for f in findings(rows)
                            if f.claim == claim and f.verdict == "not reproduced" for arm in (winner, loser))
    return runs + [run_at(size, arm, best[arm][0], epochs=LONGER * EPOCHS) for arm in retried]


def best_per_optimizer(rows: list[dict]) -> dict[str, tuple[float, dict]]:
    """{arm: (best rate on the held-out split, the seed-0 row at that rate)}."""
    first = [r for r in split_longer(rows, EPOCHS)[0] if r["seed"] == 0]
    out = {}
    for arm, (lr, _) in best_rates(first, "optimizer").items():
        out[arm] = (lr, next(r for r in first if r["optimizer"] == arm and r["lr"] == lr))
    return out


def draw(rows: list[dict], path) -> None:
    rows, longer = split_longer(rows, EPOCHS)
    fig, (left, right) = figure(2)
    for arm, (lr, row) in best_per_optimizer(rows).items():
        curve = loss_curve(path.parent / row["run_dir"])
        if curve:
            left.plot(*zip(*curve), label=f"{arm} (lr {lr:g})", ls="-" if arm.startswith("ViT") else "--")
    left.set(xlabel="step", ylabel="training loss", yscale="log")
    left.grid(alpha=0.3)
    if left.lines:  # runs whose metrics.jsonl is not kept have no curve
        left.legend(fontsize=7)
    for arm in ARMS:
        pts = sorted((r["lr"], 100 * r["test_top1"]) for r in rows if r["optimizer"] == arm and r["seed"] == 0)
        if pts:
            right.plot(*zip(*pts), marker="o" if arm.startswith("ViT") else "s",
                       ls="-" if arm.startswith("ViT") else "--", label=arm)
    for r in longer:
        right.scatter([r["lr"]], [100 * r["test_top1"]], marker="o" if r["family"] == "ViT" else "s", zorder=5,
                      facecolors="none", edgecolors="k")
        right.annotate(f"{r['epochs']:g} epochs", (r["lr"], 100 * r["test_top1"]), fontsize=7, ha="center",
                       xytext=(0, 6), textcoords="offset points")
    right.set(xscale="log", xlabel="learning rate", ylabel="test top-1 (%), seed 0")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    save(fig, path, "Optimisers at equal steps, each at its best learning rate")


def summarise(rows: list[dict]) -> str:
    rows, longer = split_longer(rows, EPOCHS)
    best = best_per_optimizer(rows)
    lines = []
    for arm in ARMS:
        if arm not in best:
            continue
        lr = best[arm][0]
        sweep = ", ".join(f"{r['lr']:g}: {pct(r['val_top1'])}" for r in sorted(
            (r for r in rows if r["optimizer"] == arm and r["seed"] == 0), key=lambda r: r["lr"]))
        lines.append([arm, sweep, f"{lr:g}", spread_of(rows, "test_top1", optimizer=arm, lr=lr).text()])
    table = markdown_table(["arm", "held-out top-1 % by learning rate (seed 0)", "best rate",
                            "test top-1 % at the best rate"], lines)
    if longer:
        table += f"\n\nTrained {LONGER}x longer ({LONGER * EPOCHS:g} epochs, seed 0, at the best rate), the arms of " \
                 f"a claim not reproduced after {EPOCHS:g} epochs:\n\n" + markdown_table(
                     ["arm", "rate", f"test top-1 % after {LONGER * EPOCHS:g} epochs", f"after {EPOCHS:g} epochs"],
                     [[r["optimizer"], f"{r['lr']:g}", pct(r["test_top1"]),
                       spread_of(rows, "test_top1", optimizer=r["optimizer"], lr=r["lr"]).text()] for r in longer])
    return table


def findings(rows: list[dict]) -> list[Finding]:
    rows, longer = split_longer(rows, EPOCHS)
    best = {arm: lr for arm, (lr, _) in best_per_optimizer(rows).items()}
    stat = {arm: spread_of(rows, "test_top1", optimizer=arm, lr=lr) for arm, lr in best.items()}
    stat = {arm: s for arm, s in stat.items() if s is not None}  # measured on the test split
    out = []
    for winner, loser, claim in CLAIMS:
        if winner in stat and loser in stat:
            out.append(Finding(claim, f"{winner} {stat[winner].text()}, {loser} {stat[loser].text()}",
                               verdict_better(stat[winner], stat[loser])))
        trained_longer = [spread_of(longer, "test_top1", optimizer=arm) for arm in (winner, loser)]
        if None not in trained_longer and winner in stat and loser in stat:  # judged by the sweeps' seed range
            noise, (a, b) = seed_noise([stat[winner], stat[loser]]), trained_longer
            out.append(Finding(f"... trained {LONGER}x longer ({LONGER * EPOCHS:g} epochs, seed 0)",
                               f"{winner} {pct(a.mean)}, {loser} {pct(b.mean)}: {100 * (a.mean - b.mean):+.2f} "
                               f"points; seed range {100 * noise:.2f}", verdict_better(a, b, noise)))
    return out


STUDY = Study(
    name="optimizers",
    title="SGD, momentum, Adagrad and Adam at equal steps",
    paper="Appendix D.1 (SGD against Adam) and the seed notes' comparison",
    question="How much does the optimiser matter for training a ViT (and a ResNet) from scratch, each at its best "
             "learning rate?",
    grid=grid, draw=draw, summarise=summarise, findings=findings, extend=extend,
    budget={"quick": f"{QUICK_STEPS} steps of 64, one learning rate per optimiser.",
            "default": f"{EPOCHS} epochs of 54,000 images per run at batch 128, no weight decay, cosine, fp32; "
                       "each sweep extended until its best rate (held-out split) is inside it, then a second seed "
                       f"there; the two arms of a claim not reproduced trained {LONGER}x longer at their best rates "
                       "(seed 0).",
            "paper": "ViT-B/16 on JFT-300M per optimiser and learning rate."},
    paper_numbers="""
Appendix D.1 (ResNets pre-trained on JFT-300M, then transferred): Adam pre-training is slightly better than SGD
with momentum on average, which is why the paper pre-trains every model, ResNets included, with Adam. The
paper compares no other optimisers; Adagrad and plain SGD are here for the seed notes' comparison.
""")
