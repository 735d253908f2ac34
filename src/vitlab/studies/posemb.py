"""Table 8 (Appendix D.4): no / 1-D / 2-D / relative (and fixed sin-cos) position embeddings.

The paper: any encoding is far better than none, and the variants differ little (patch-level inputs make the
spatial encoding matter less). Two tasks: Fashion-MNIST (where a bag of patches already says much) and the
synthetic `quadrants` task, where only position decides the label, so "none" must stay at chance (25%).
"""

from __future__ import annotations

from .core import MAIN_VIT, TINY_VIT, Run, Study, fashion_mnist_run, paper_run, steps_for, scale_of
from .report import group_mean, markdown_table, pct

VARIANTS = ["none", "learned_1d", "learned_2d", "relative", "sincos_2d"]
BASE = dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)
SEEDS = {"quick": [0], "default": [0, 1]}
IMAGES = {"quick": 64 * 15, "default": 30_000}
QUADRANT_IMAGES = {"quick": 64 * 25, "default": 20_000}


def grid(size: str) -> list[Run]:
    if size == "paper":  # ViT-B/16, JFT-300M, 5-shot linear ImageNet
        return [Run(f"vit-b16-{v}", paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096, overrides={"posemb": v}),
                    {"task": "jft", "posemb": v, "seed": 0}) for v in VARIANTS]
    base = TINY_VIT if size == "quick" else BASE
    batch, eval_split = scale_of(size)
    runs = []
    for seed in SEEDS[size]:
        for variant in VARIANTS:
            config = fashion_mnist_run(overrides={**base, "posemb": variant}, steps=steps_for(IMAGES[size], batch),
                                       batch_size=batch, eval_split=eval_split, seed=seed)
            runs.append(Run(f"fmnist-{variant}-s{seed}", config, {"task": "fashion_mnist", "posemb": variant,
                                                                   "seed": seed}))
    for variant in VARIANTS:  # 56 x 56 canvases: 14 x 14 patches of 4 px (quick: 8 x 8 of 7 px)
        config = fashion_mnist_run(overrides={**base, "posemb": variant}, dataset="quadrants", image_size=56,
                                   steps=steps_for(QUADRANT_IMAGES[size], batch), batch_size=batch,
                                   eval_split=eval_split)
        runs.append(Run(f"quadrants-{variant}", config, {"task": "quadrants", "posemb": variant, "seed": 0},
                        fewshot=False))
    return runs


def draw(rows: list[dict], path) -> None:
    """Accuracy per variant on both tasks, then each variant's position-embedding similarity (Figure 7 centre)."""
    import matplotlib.pyplot as plt

    from .posemb_figure import similarity_panels

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig = plt.figure(figsize=(5.2 * (len(tasks) + 1), 7.5))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(2, len(tasks) + 1, i + 1)
        stats = group_mean([r for r in rows if r["task"] == task], ("posemb",), "test_top1")
        names = [v for v in VARIANTS if (v,) in stats]
        ax.bar(names, [100 * stats[(v,)][0] for v in names], yerr=[100 * stats[(v,)][1] for v in names], capsize=3,
               color=["tab:gray" if v == "none" else "tab:blue" for v in names])
        if task == "quadrants":
            ax.axhline(25, color="k", ls="--", lw=1, label="chance")
            ax.legend(fontsize=8)
        low = min(100 * stats[(v,)][0] for v in names)
        ax.set(title=task, ylabel="test top-1 (%)", ylim=(max(0, low - 10), 100))
        ax.tick_params(axis="x", rotation=30)
    similarity_panels(fig, rows, VARIANTS, out_dir=path.parent, ncols=len(tasks) + 1)
    fig.suptitle("Position embeddings (cf. the paper's Table 8 and Figure 7)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(rows: list[dict]) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    top1 = group_mean(rows, ("task", "posemb"), "test_top1")
    shot5 = group_mean(rows, ("task", "posemb"), "fewshot5")
    header = ["posemb"] + [f"{t} top-1 %" for t in tasks] + [f"{t} 5-shot %" for t in tasks if t != "quadrants"]
    lines = []
    for v in VARIANTS:
        line = [v]
        for t in tasks:
            m, s, n = top1.get((t, v), (None, 0.0, 0))
            line.append("-" if m is None else f"{100 * m:.2f}" + (f" +- {100 * s:.2f} (n={n})" if n > 1 else ""))
        line += [pct(shot5.get((t, v), (None,))[0]) for t in tasks if t != "quadrants"]
        lines.append(line)
    return markdown_table(header, lines)


STUDY = Study(
    name="posemb",
    title="Position embeddings: none, 1-D, 2-D, relative, sin-cos",
    paper="Table 8 (Appendix D.4)",
    question="How much does the kind of position embedding matter, and does having none matter?",
    grid=grid, draw=draw, summarise=summarise,
    budget={"quick": "15 steps of 64 (25 on quadrants), a tiny model, one seed.",
            "default": f"Fashion-MNIST: {IMAGES['default']:,} images per run at batch 128, two seeds; quadrants: "
                       f"{QUADRANT_IMAGES['default']:,} images, one seed; AdamW lr 1e-3 cosine, bf16.",
            "paper": "ViT-B/16, 7 epochs of JFT-300M per variant, 5-shot linear ImageNet."},
    paper_numbers="""
Table 8 (ViT-B/16, 5-shot linear ImageNet, embeddings added at the input): no position embedding 0.6138;
1-D 0.6421; 2-D 0.6400; relative 0.6403. Adding them at every layer (shared or not) gives about the same.
(The paper has no sin-cos row; MAE and big_vision use fixed 2-D sin-cos.)
""")
