"""Figure 9 (Appendix D.3): the [class] token against global average pooling, across learning rates.

The paper: both work about equally well, but need different learning rates (token at 8e-4 is good; GAP at
8e-4 is poor, GAP at 3e-4 matches the token).
"""

from __future__ import annotations

from .core import MAIN_VIT, TINY_VIT, Run, Study, fashion_mnist_run, paper_run, steps_for, scale_of
from .plots import figure, lines_by, save
from .report import group_mean, markdown_table, pct

BASE = dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)
LRS = {"quick": [1e-3, 3e-3], "default": [3e-4, 1e-3, 3e-3], "paper": [3e-4, 8e-4]}
IMAGES = {"quick": 64 * 15, "default": 30_000}
POOLING = {"token": "class token", "gap": "global average pooling"}


def grid(size: str) -> list[Run]:
    if size == "paper":  # Figure 9: ViT-B/16 on JFT-300M, Adam, 5-shot linear ImageNet
        return [Run(f"vit-b16-{pool}-lr{lr:g}", paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096, lr=lr,
                                                          overrides={"classifier": pool}),
                    {"pooling": pool, "lr": lr}) for pool in POOLING for lr in LRS["paper"]]
    base = TINY_VIT if size == "quick" else BASE
    batch, eval_split = scale_of(size)
    runs = []
    for pool in POOLING:
        for lr in LRS[size]:
            config = fashion_mnist_run(overrides={**base, "classifier": pool}, lr=lr, batch_size=batch,
                                       steps=steps_for(IMAGES[size], batch),
                                       eval_split=eval_split)
            runs.append(Run(f"{pool}-lr{lr:g}", config, {"pooling": pool, "lr": lr}))
    return runs


def draw(rows: list[dict], path) -> None:
    fig, (left, right) = figure(2)
    styles = {"token": dict(color="tab:blue", marker="o"), "gap": dict(color="tab:orange", marker="s")}
    lines_by(left, rows, group="pooling", x="lr", y="test_top1", logx=True, styles=styles)
    left.set(xlabel="peak learning rate", ylabel="test top-1 (%)")
    lines_by(right, rows, group="pooling", x="lr", y="fewshot5", logx=True, styles=styles)
    right.set(xlabel="peak learning rate", ylabel="5-shot linear accuracy (%)")
    save(fig, path, "Class token against global average pooling (cf. the paper's Figure 9)")


def summarise(rows: list[dict]) -> str:
    lrs = sorted({r["lr"] for r in rows})
    top1 = group_mean(rows, ("pooling", "lr"), "test_top1")
    shot5 = group_mean(rows, ("pooling", "lr"), "fewshot5")
    lines = [[POOLING[p]] + [f"{pct(top1.get((p, lr), (None,))[0])} / {pct(shot5.get((p, lr), (None,))[0])}"
                             for lr in lrs] for p in POOLING if any(r["pooling"] == p for r in rows)]
    return markdown_table(["pooling"] + [f"lr {lr:g}: top-1 / 5-shot %" for lr in lrs], lines)


STUDY = Study(
    name="pooling",
    title="Class token against global average pooling",
    paper="Figure 9 (Appendix D.3)",
    question="Does the [class] token matter, or only the learning rate each choice needs?",
    grid=grid, draw=draw, summarise=summarise,
    budget={"quick": "15 steps of 64, a tiny model.",
            "default": f"{IMAGES['default']:,} images per run at batch 128, AdamW cosine, bf16.",
            "paper": "ViT-B/16, JFT-300M, the two learning rates of Figure 9."},
    paper_numbers="""
Figure 9 (ViT-B/16, 5-shot linear ImageNet during JFT pre-training): the class token at lr 8e-4 and GAP at lr
3e-4 perform about equally; GAP at lr 8e-4 is clearly worse. "Both work similarly well, but require different
learning rates."
""")
