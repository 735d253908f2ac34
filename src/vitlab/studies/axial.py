"""Appendix D.6: AxialViT (row attention then column attention in each block) against ViT, by input size.

The paper: Axial-ViT-B/16 and B/32 do better than ViT-B at the same patch size, but cost more compute.
"""

from __future__ import annotations

from .core import MAIN_VIT, TINY_VIT, Run, Study, fashion_mnist_run, paper_run, steps_for, scale_of
from .plots import figure, lines_by, save
from .report import markdown_table, pct

BASE = dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)
SIZES = {"quick": [28], "default": [28, 56], "paper": [224, 384]}
IMAGES = {"quick": 64 * 15, "default": 30_000}
ARCHS = {"ViT": "full", "AxialViT": "axial"}


def grid(size: str) -> list[Run]:
    runs = []
    for arch, attention in ARCHS.items():
        for image_size in SIZES[size]:
            if size == "paper":
                config = paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096, image_size=image_size,
                                   overrides={"attention": attention})
            else:
                base = TINY_VIT if size == "quick" else BASE
                batch, eval_split = scale_of(size)
                config = fashion_mnist_run(overrides={**base, "attention": attention}, image_size=image_size,
                                           steps=steps_for(IMAGES[size], batch), batch_size=batch,
                                           eval_split=eval_split)
            runs.append(Run(f"{arch.lower()}-{image_size}px", config, {"family": arch, "image_size": image_size}))
    return runs


def draw(rows: list[dict], path) -> None:
    fig, (left, middle, right) = figure(3, width=4.4)
    lines_by(left, rows, group="family", x="image_size", y="test_top1")
    left.set(xlabel="input size (px)", ylabel="test top-1 (%)")
    lines_by(middle, rows, group="family", x="image_size", y="gflops_per_image", percent=False)
    middle.set(xlabel="input size (px)", ylabel="GFLOPs per image")
    lines_by(right, rows, group="family", x="image_size", y="images_per_s", percent=False)
    right.set(xlabel="input size (px)", ylabel="training images/s")
    save(fig, path, "Axial attention against full attention (cf. the paper's Appendix D.6)")


def summarise(rows: list[dict]) -> str:
    lines = [[r["family"], r["image_size"], f"{r['params']:,}", f"{r['gflops_per_image']:.4f}",
              f"{r['images_per_s']:.0f}", pct(r["test_top1"]), pct(r.get("fewshot5"))] for r in rows]
    return markdown_table(["model", "input px", "params", "GFLOPs / image", "train images/s", "top-1 %", "5-shot %"],
                          lines) + "\n\nFashion-MNIST is resized to the input size; patches of 4 px throughout."


STUDY = Study(
    name="axial",
    title="Axial attention against full self-attention",
    paper="Appendix D.6 (Figure 13)",
    question="Does attending along rows then columns beat full attention, and at what cost?",
    grid=grid, draw=draw, summarise=summarise,
    budget={"quick": "15 steps of 64, a tiny model, 28 px.",
            "default": f"{IMAGES['default']:,} images per run at batch 128, AdamW lr 1e-3 cosine, bf16.",
            "paper": "ViT-B/16 and Axial-ViT-B/16 on JFT-300M, 7 epochs."},
    paper_numbers="""
Appendix D.6, Figure 13 (JFT-300M pre-training, 5-shot ImageNet and ImageNet fine-tuning against compute and
inference speed): Axial-ViT-B/32 and Axial-ViT-B/16 do better than their ViT-B counterparts in performance, but
at the cost of more compute; the naive axial implementation is also slower on TPU.
""")
