"""Figure 8 (Appendix D.2): scale one dimension at a time (depth, width, MLP width, patch size) of a base ViT.

The paper: depth helps most, width least; smaller patches (longer sequences) help consistently; accuracy
against compute.
"""

from __future__ import annotations

from .core import MAIN_VIT, TINY_VIT, Run, Study, fashion_mnist_run, paper_run, steps_for, scale_of
from .plots import figure, save
from .report import markdown_table, pct

BASE = dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)
SCALES = {"depth": [2, 8], "width": [32, 128], "mlp_dim": [128, 1024], "patch_size": [7, 2]}
QUICK_SCALES = {"depth": [1], "width": [16], "mlp_dim": [32], "patch_size": [4]}
IMAGES = {"quick": 64 * 15, "default": 30_000}
PAPER_SCALES = {"depth": [6, 12, 24, 32, 64], "width": [384, 768, 1024], "mlp_dim": [1536, 3072, 4096],
                "patch_size": [8, 16, 32]}


def grid(size: str) -> list[Run]:
    if size == "paper":  # Appendix D.2: ViT-B/16-like base, 5-shot ImageNet after JFT-300M pre-training
        base = dict(patch_size=16, width=768, depth=12, mlp_dim=3072, num_heads=12)
        return [Run(f"{dim}-{value}", paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096,
                                                overrides={**base, dim: value, **_heads(dim, value)}),
                    {"dimension": dim, "value": value}) for dim, values in PAPER_SCALES.items() for value in values]
    base = TINY_VIT if size == "quick" else BASE
    scales = QUICK_SCALES if size == "quick" else SCALES
    batch, eval_split = scale_of(size)
    steps = steps_for(IMAGES[size], batch)
    runs = [Run("base", fashion_mnist_run(overrides=base, steps=steps, batch_size=batch, eval_split=eval_split),
                {"dimension": "base", "value": 0})]
    for dim, values in scales.items():
        for value in values:
            overrides = {**base, dim: value, **_heads(dim, value)}
            runs.append(Run(f"{dim}-{value}", fashion_mnist_run(overrides=overrides, steps=steps, batch_size=batch,
                                                                eval_split=eval_split),
                            {"dimension": dim, "value": value}))
    return runs


def _heads(dim: str, value: int) -> dict:
    """Keep the head width at 32 (or 64 at paper scale) when the width changes."""
    if dim != "width":
        return {}
    return {"num_heads": max(1, value // (64 if value >= 384 else 32))}


def draw(rows: list[dict], path) -> None:
    fig, (left, right) = figure(2)
    base = next((r for r in rows if r["dimension"] == "base"), None)
    for ax, metric, label in ((left, "test_top1", "test top-1 (%)"), (right, "fewshot5", "5-shot linear (%)")):
        for dim in dict.fromkeys(r["dimension"] for r in rows if r["dimension"] != "base"):
            pts = sorted([r for r in rows if r["dimension"] == dim] + ([base] if base else []),
                         key=lambda r: r["train_pflops"])
            ax.plot([r["train_pflops"] for r in pts], [100 * r[metric] for r in pts], marker="o", label=dim)
        if base:
            ax.scatter([base["train_pflops"]], [100 * base[metric]], color="k", zorder=5, label="base")
        ax.set(xscale="log", xlabel="training compute (PFLOPs)", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path, "Scaling one dimension at a time (cf. the paper's Figure 8)")


def summarise(rows: list[dict]) -> str:
    lines = [[r["dimension"], r["value"] or "-", f"{r['params']:,}", f"{r['train_pflops']:.3f}", pct(r["test_top1"]),
              pct(r.get("fewshot5"))] for r in rows]
    base = ", ".join(f"{k} {v}" for k, v in BASE.items())
    return markdown_table(["dimension", "value", "params", "training PFLOPs", "top-1 %", "5-shot %"], lines) + \
        f"\n\nBase model (default size): {base}; each row changes one setting of it."


STUDY = Study(
    name="dimensions",
    title="Scaling the dimensions of a ViT one at a time",
    paper="Figure 8 (Appendix D.2)",
    question="Which dimension (depth, width, MLP width, patch size) buys the most accuracy per unit of compute?",
    grid=grid, draw=draw, summarise=summarise,
    budget={"quick": "15 steps of 64 per run, a tiny base.",
            "default": f"every run sees {IMAGES['default']:,} images at batch 128, AdamW lr 1e-3 cosine, bf16.",
            "paper": "ViT-B/16 base scaled per Appendix D.2, 7 epochs of JFT-300M each."},
    paper_numbers="""
Figure 8 (5-shot ImageNet against pre-training compute, JFT-300M; base ViT-B/16-like): scaling the depth gives
the largest improvements (clear up to 64 layers, diminishing after 16); scaling the width gives the smallest;
decreasing the patch size (longer sequences) improves robustly without adding parameters. Compute is a good
predictor of performance across the variants.
""")
