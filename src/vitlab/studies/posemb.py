"""Table 8 (Appendix D.4): no / 1-D / 2-D / relative (and fixed sin-cos) position embeddings.

The paper: any encoding is far better than none, and the variants differ little (patch-level inputs make the
spatial encoding matter less). Two tasks: Fashion-MNIST (where a bag of patches already says much) and the
synthetic `quadrants` task, where only position decides the label, so "none" must stay at chance (25%).
"""

from __future__ import annotations

from .core import (LONGER, SMALL_VIT, TINY_VIT, Finding, Run, Study, epochs_to_steps, fashion_mnist_run,
                   paper_run, scale_of)
from .report import group_mean, markdown_table, pct, seed_noise, spread_of, verdict_better, verdict_tie

VARIANTS = ["none", "learned_1d", "learned_2d", "relative", "sincos_2d"]
BASE = SMALL_VIT
SEEDS = {"quick": [0], "default": [0, 1, 2]}
QUADRANT_SEEDS = {"quick": [0], "default": [0, 1]}
EPOCHS = {"fashion_mnist": 2, "quadrants": 1}
# when the paper's learned embeddings do not tie, the two furthest apart are trained LONGER times longer (seed 0)
LONGER_TASK = f"fashion_mnist, {LONGER}x epochs"
LEARNED = ["learned_1d", "learned_2d", "relative"]  # the paper's rows
QUICK_STEPS = {"fashion_mnist": 15, "quadrants": 25}
# quadrants: 56 x 56 canvases cut into 4 x 4 patches of 14 px, so each quadrant is 2 x 2 whole patches
QUADRANT_PATCH = 14


def grid(size: str) -> list[Run]:
    if size == "paper":  # ViT-B/16, JFT-300M, 5-shot linear ImageNet
        return [Run(f"vit-b16-{v}", paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096, overrides={"posemb": v}),
                    {"task": "jft", "posemb": v, "seed": 0}) for v in VARIANTS]
    base = TINY_VIT if size == "quick" else BASE
    scale = scale_of(size)

    def steps(task):
        return QUICK_STEPS[task] if size == "quick" else epochs_to_steps(EPOCHS[task], scale.batch_size)

    runs = []
    for seed in SEEDS[size]:
        for variant in VARIANTS:
            config = fashion_mnist_run(overrides={**base, "posemb": variant}, steps=steps("fashion_mnist"),
                                       scale=scale, seed=seed)
            runs.append(Run(f"fmnist-{variant}-s{seed}", config, {"task": "fashion_mnist", "posemb": variant,
                                                                   "seed": seed}, test_split=scale.test_split))
    for seed in QUADRANT_SEEDS[size]:
        for variant in VARIANTS:
            overrides = {**base, "posemb": variant, "patch_size": QUADRANT_PATCH}
            config = fashion_mnist_run(overrides=overrides, dataset="quadrants", image_size=56, seed=seed,
                                       steps=steps("quadrants"), scale=scale)
            runs.append(Run(f"quadrants-{variant}-s{seed}", config, {"task": "quadrants", "posemb": variant,
                                                                      "seed": seed},
                            fewshot=False, test_split=scale.test_split))
    return runs


def fashion_mnist_longer(size: str, variant: str) -> Run:
    scale = scale_of(size)
    config = fashion_mnist_run(overrides={**BASE, "posemb": variant}, scale=scale,
                               steps=epochs_to_steps(LONGER * EPOCHS["fashion_mnist"], scale.batch_size))
    return Run(f"fmnist-{variant}-x{LONGER}-s0", config, {"task": LONGER_TASK, "posemb": variant, "seed": 0},
               test_split=scale.test_split)


def learned_gap(rows: list[dict]):
    """(best, worst) of the paper's learned embeddings on Fashion-MNIST, their spreads, and the seed range that
    judges them; None until each has a result."""
    stats = {v: spread_of(rows, "test_top1", task="fashion_mnist", posemb=v) for v in LEARNED}
    if any(s is None for s in stats.values()):
        return None
    ranked = sorted(LEARNED, key=lambda v: stats[v].mean)
    return ranked[-1], ranked[0], stats, seed_noise(list(stats.values()))


def extend(size: str, rows: list[dict]) -> list[Run]:
    """The learned embeddings furthest apart, trained longer, when after the grid's epochs they do not tie."""
    gap = learned_gap(rows) if size == "default" else None
    if gap is None:
        return []
    best, worst, stats, noise = gap
    if stats[best].mean - stats[worst].mean <= noise:
        return []
    return [fashion_mnist_longer(size, v) for v in (best, worst)]


def draw(rows: list[dict], path) -> None:
    """Accuracy per variant on both tasks, then each variant's position-embedding similarity (Figure 7 centre)."""
    import matplotlib.pyplot as plt

    from .posemb_figure import LAYOUT, similarity_panels

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig = plt.figure(figsize=(12, 7.5))
    top = fig.add_gridspec(2, 1, **LAYOUT)[0].subgridspec(1, max(1, len(tasks)))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(top[0, i])
        stats = {v: spread_of(rows, "test_top1", task=task, posemb=v) for v in VARIANTS}
        names = [v for v in VARIANTS if stats[v] is not None]
        means = [100 * stats[v].mean for v in names]
        ax.bar(names, means, color=["tab:gray" if v == "none" else "tab:blue" for v in names])
        seeded = [v for v in names if stats[v].n >= 2]  # a single seed has no range to draw
        ax.errorbar(seeded, [100 * stats[v].mean for v in seeded], fmt="none", ecolor="k", capsize=3,
                    yerr=[[100 * (stats[v].mean - stats[v].low) for v in seeded],
                          [100 * (stats[v].high - stats[v].mean) for v in seeded]])
        if task == "quadrants":
            ax.axhline(25, color="k", ls="--", lw=1, label="chance")
            ax.legend(fontsize=8)
        ax.set(title=task, ylabel="test top-1 (%)" if i == 0 else "", ylim=(max(0, min(means) - 10), 101))
        ax.tick_params(axis="x", labelsize=8, labelrotation=30)
    similarity_panels(fig, rows, VARIANTS, out_dir=path.parent)
    fig.suptitle("Position embeddings (cf. the paper's Table 8 and Figure 7); error bars: seed range")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def summarise(rows: list[dict]) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    shot5 = group_mean(rows, ("task", "posemb"), "fewshot5")
    header = ["posemb"] + [f"{t} test top-1 %" for t in tasks] + [f"{t} 5-shot %" for t in tasks if t != "quadrants"]
    lines = []
    for v in VARIANTS:
        stats = [spread_of(rows, "test_top1", task=t, posemb=v) for t in tasks]
        lines.append([v] + ["-" if s is None else s.text() for s in stats]
                     + [pct(shot5.get((t, v), (None,))[0]) for t in tasks if t != "quadrants"])
    return markdown_table(header, lines) + "\n\nMean ±half the range over seeds (n seeds)."


def findings(rows: list[dict]) -> list[Finding]:
    fm = {v: spread_of(rows, "test_top1", task="fashion_mnist", posemb=v) for v in VARIANTS}
    if any(s is None for s in fm.values()):
        return []
    best, worst, _, spread = learned_gap(rows)  # each finding's noise: the seed range of its own arms
    out = [Finding("Any position embedding is better than none (Fashion-MNIST)",
                   f"none {fm['none'].text()}; weakest other, {worst}, {fm[worst].text()}",
                   verdict_better(fm[worst], fm["none"])),
           Finding("1-D, 2-D and relative embeddings perform about the same",
                   ", ".join(f"{v} {fm[v].text()}" for v in LEARNED)
                   + f"; {best} - {worst}: {100 * (fm[best].mean - fm[worst].mean):.2f} points, seed range "
                     f"{100 * spread:.2f}",
                   verdict_tie(fm[best], fm[worst], spread))]
    longer = {v: spread_of(rows, "test_top1", task=LONGER_TASK, posemb=v) for v in (best, worst)}
    if None not in longer.values():
        epochs = LONGER * EPOCHS["fashion_mnist"]
        out.append(Finding(f"... the two furthest apart, trained {LONGER}x longer ({epochs} epochs, seed 0)",
                           f"{best} {pct(longer[best].mean)}, {worst} {pct(longer[worst].mean)}: "
                           f"{100 * (longer[best].mean - longer[worst].mean):+.2f} points (after "
                           f"{EPOCHS['fashion_mnist']} epochs {100 * (fm[best].mean - fm[worst].mean):+.2f}); "
                           f"seed range {100 * spread:.2f}",
                           verdict_tie(longer[best], longer[worst], spread)))
    quad = {v: spread_of(rows, "test_top1", task="quadrants", posemb=v) for v in VARIANTS}
    if quad["none"] is not None and quad["learned_1d"] is not None:
        out.append(Finding("Without position embedding, a task that depends on position is at chance (quadrants)",
                           f"none {quad['none'].text()}, learned 1-D {quad['learned_1d'].text()}; chance 25.00",
                           verdict_better(quad["learned_1d"], quad["none"])))
    return out


STUDY = Study(
    name="posemb",
    title="Position embeddings: none, 1-D, 2-D, relative, sin-cos",
    paper="Table 8 (Appendix D.4)",
    question="How much does the kind of position embedding matter, and does having none matter?",
    grid=grid, draw=draw, summarise=summarise, findings=findings, extend=extend,
    budget={"quick": "15 steps of 64 (25 on quadrants), a tiny model, one seed.",
            "default": f"Fashion-MNIST: {EPOCHS['fashion_mnist']} epochs of 54,000 images per run at batch 128, three "
                       f"seeds; quadrants (patch 14 on 56 px): {EPOCHS['quadrants']} epoch, two seeds; AdamW lr 1e-3 "
                       f"cosine, fp32. When 1-D, 2-D and relative do not tie, the two furthest apart are trained "
                       f"{LONGER}x longer (seed 0).",
            "paper": "ViT-B/16, 7 epochs of JFT-300M per variant, 5-shot linear ImageNet."},
    paper_numbers="""
Table 8 (ViT-B/16, 5-shot linear ImageNet, embeddings added at the input): no position embedding 0.6138;
1-D 0.6421; 2-D 0.6400; relative 0.6403. Adding them at every layer (shared or not) gives about the same.
(The paper has no sin-cos row; MAE and big_vision use fixed 2-D sin-cos.)
""")
