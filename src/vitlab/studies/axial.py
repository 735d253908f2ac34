"""Appendix D.6: AxialViT (row attention then column attention in each block) against ViT, by patch size.

The paper: Axial-ViT-B/16 and B/32 do better than ViT-B at the same patch size, but cost more compute. An
AxialViT block is two blocks (a row one and a column one), so it has twice the parameters of the ViT of the same
depth; a deeper ViT with the same parameters ("ViT-deep") says whether the gain is the axial attention's or only
the extra parameters'.
"""

from __future__ import annotations

from .core import (SMALL_VIT, TINY_VIT, Finding, Run, Study, epochs_to_steps, fashion_mnist_run, paper_run,
                   scale_of)
from .plots import figure, lines_by, save
from .report import markdown_table, pct, spread_of, verdict_better

BASE = SMALL_VIT
PATCHES = {"quick": [7], "default": [4, 7], "paper": [16, 32]}
SEEDS = {"quick": [0], "default": [0, 1, 2]}
EPOCHS, QUICK_STEPS = 1.5, 15
# family -> model overrides beside the base; ViT-deep matches AxialViT's parameters with twice the depth
# full attention is the default, left unsaid so the ViT's runs match the scaling study's smallest ViT
ARCHS = {"ViT": {}, "AxialViT": {"attention": "axial"}, "ViT-deep": {"double_depth": True}}


def overrides_of(base: dict, arch: str, patch: int) -> dict:
    settings = dict(ARCHS[arch])
    deeper = settings.pop("double_depth", False)
    return {**base, **settings, "patch_size": patch, "depth": base["depth"] * (2 if deeper else 1)}


def grid(size: str) -> list[Run]:
    runs = []
    for arch in ARCHS:
        for patch in PATCHES[size]:
            if size == "paper":
                config = paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096,
                                   overrides=overrides_of({"depth": 12}, arch, patch))
                runs.append(Run(f"{arch.lower()}-p{patch}", config, {"family": arch, "patch_size": patch, "seed": 0}))
                continue
            scale = scale_of(size)
            steps = QUICK_STEPS if size == "quick" else epochs_to_steps(EPOCHS, scale.batch_size)
            for seed in SEEDS[size]:
                config = fashion_mnist_run(overrides=overrides_of(TINY_VIT if size == "quick" else BASE, arch, patch),
                                           steps=steps, scale=scale, seed=seed)
                runs.append(Run(f"{arch.lower()}-p{patch}-s{seed}", config,
                                {"family": arch, "patch_size": patch, "seed": seed}, test_split=scale.test_split))
    return runs


STYLES = {"ViT": dict(color="tab:blue", marker="o"), "AxialViT": dict(color="tab:red", marker="D"),
          "ViT-deep": dict(color="tab:purple", marker="^")}


def draw(rows: list[dict], path) -> None:
    fig, (left, middle, right) = figure(3, width=4.4)
    lines_by(left, rows, group="family", x="patch_size", y="test_top1", styles=STYLES)
    left.set(xlabel="patch size (px)", ylabel="test top-1 (%)")
    lines_by(middle, rows, group="family", x="patch_size", y="gflops_per_image", percent=False, styles=STYLES)
    middle.set(xlabel="patch size (px)", ylabel="GFLOPs per image")
    lines_by(right, rows, group="family", x="patch_size", y="images_per_s", percent=False, styles=STYLES)
    right.set(xlabel="patch size (px)", ylabel="training images/s")
    for ax in (left, middle, right):
        ax.set_xticks(sorted({r["patch_size"] for r in rows}))
    save(fig, path, "Axial attention against full attention (cf. the paper's Appendix D.6)")


def summarise(rows: list[dict]) -> str:
    lines = []
    for arch in ARCHS:
        for patch in sorted({r["patch_size"] for r in rows}):
            first = next((r for r in rows if r["family"] == arch and r["patch_size"] == patch), None)
            if first is None:
                continue
            stats = spread_of(rows, "test_top1", family=arch, patch_size=patch)
            lines.append([arch, patch, f"{first['params']:,}", f"{first['gflops_per_image']:.4f}",
                          f"{first['images_per_s']:.0f}", stats.text(), pct(first.get("fewshot5"))])
    return markdown_table(["model", "patch px", "params", "GFLOPs / image", "train images/s (seed 0)",
                           "test top-1 %", "5-shot % (seed 0)"], lines) + \
        "\n\n28 x 28 inputs; images/s as measured while training, on a machine shared with other work."


def findings(rows: list[dict]) -> list[Finding]:
    out = []
    for patch in sorted({r["patch_size"] for r in rows}):
        stat = {a: spread_of(rows, "test_top1", family=a, patch_size=patch) for a in ARCHS}
        if any(s is None for s in stat.values()):
            continue
        out.append(Finding(f"AxialViT beats ViT at the same patch size (patch {patch})",
                           f"AxialViT {stat['AxialViT'].text()}, ViT {stat['ViT'].text()}",
                           verdict_better(stat["AxialViT"], stat["ViT"])))
        out.append(cost_finding(rows, patch))
        out.append(Finding(f"... and a ViT with the same parameters, twice as deep (patch {patch}; not in the paper)",
                           f"AxialViT {stat['AxialViT'].text()}, ViT-deep {stat['ViT-deep'].text()}",
                           verdict_better(stat["AxialViT"], stat["ViT-deep"])))
    return out


def cost_finding(rows: list[dict], patch: int) -> Finding:
    """FLOPs are counted, not timed: a verdict without seeds; the training speed is given beside them."""
    cost = {a: next(r for r in rows if r["family"] == a and r["patch_size"] == patch) for a in ("AxialViT", "ViT")}
    speed = {a: spread_of(rows, "images_per_s", family=a, patch_size=patch).mean for a in cost}
    ratio = cost["AxialViT"]["gflops_per_image"] / cost["ViT"]["gflops_per_image"]
    return Finding(f"... at the cost of more compute (patch {patch})",
                   f"GFLOPs per image: AxialViT {cost['AxialViT']['gflops_per_image']:.4f}, ViT "
                   f"{cost['ViT']['gflops_per_image']:.4f} ({ratio:.2f}x); training images/s {speed['AxialViT']:.0f} "
                   f"against {speed['ViT']:.0f}", "reproduced" if ratio > 1 else "not reproduced")


STUDY = Study(
    name="axial",
    title="Axial attention against full self-attention",
    paper="Appendix D.6 (Figure 13)",
    question="Does attending along rows then columns beat full attention, at what cost, and is it the attention "
             "or the parameters?",
    grid=grid, draw=draw, summarise=summarise, findings=findings,
    budget={"quick": f"{QUICK_STEPS} steps of 64, a tiny model, patch 7.",
            "default": f"{EPOCHS} epochs of 54,000 images per run at batch 128, AdamW lr 1e-3 cosine, fp32, three "
                       "seeds; patches of 4 and 7 px on 28 x 28 inputs (as the paper's B/16 and B/32).",
            "paper": "ViT-B and Axial-ViT-B at patch 16 and 32 on JFT-300M, 7 epochs."},
    paper_numbers="""
Appendix D.6, Figure 13 (JFT-300M pre-training, 5-shot ImageNet and ImageNet fine-tuning against compute and
inference speed): Axial-ViT-B/32 and Axial-ViT-B/16 do better than their ViT-B counterparts in performance, but
at the cost of more compute; the naive axial implementation is also slower on TPU.
""")
