"""Figure 8 (Appendix D.2): scale one dimension at a time (depth, width, MLP width, patch size) of a base ViT.

The paper: depth helps most, width least; smaller patches (longer sequences) help consistently; accuracy
against compute.
"""

from __future__ import annotations

from .core import (LONGER, SMALL_VIT, TINY_VIT, Finding, Run, Study, epochs_to_steps, fashion_mnist_run,
                   paper_run, scale_of, split_longer)
from .plots import compute_axis, figure, save
from .report import markdown_table, pct, seed_noise, spread_of, verdict_better

# the posemb study's learned 1-D runs, said the same way: the base's three seeds are taken from that study's
# results where they exist (the cache is keyed by the configuration)
BASE = dict(SMALL_VIT, posemb="learned_1d")
SCALES = {"depth": [2, 8], "width": [32, 128], "mlp_dim": [128, 1024], "patch_size": [7, 2]}
QUICK_SCALES = {"depth": [1], "width": [16], "mlp_dim": [32], "patch_size": [4]}
EPOCHS, QUICK_STEPS, BASE_SEEDS = 2, 15, (0, 1, 2)
# A finding not reproduced after EPOCHS: its two arms trained LONGER times longer (seed 0). For the patch size
# the cheaper pair asks the same question: the base's patch 4 against patch 7 (patch 2 costs five times the base).
LONGER_PAIRS = {"Scaling depth helps more than scaling width": (("depth", 8), ("width", 128)),
                "Smaller patches (longer sequences) help": (("base", 0), ("patch_size", 7))}
PAPER_SCALES = {"depth": [6, 12, 24, 32, 64], "width": [384, 768, 1024], "mlp_dim": [1536, 3072, 4096],
                "patch_size": [8, 16, 32]}


def grid(size: str) -> list[Run]:
    if size == "paper":  # Appendix D.2: ViT-B/16-like base, 5-shot ImageNet after JFT-300M pre-training
        base = dict(patch_size=16, width=768, depth=12, mlp_dim=3072, num_heads=12)
        return [Run(f"{dim}-{value}", paper_run("ViT-B/16", steps=7 * 300_000_000 // 4096,
                                                overrides={**base, dim: value, **_heads(dim, value)}),
                    {"dimension": dim, "value": value, "seed": 0})
                for dim, values in PAPER_SCALES.items() for value in values]
    base = TINY_VIT if size == "quick" else BASE
    scales = QUICK_SCALES if size == "quick" else SCALES
    scale = scale_of(size)
    steps = QUICK_STEPS if size == "quick" else epochs_to_steps(EPOCHS, scale.batch_size)

    def run(name, overrides, tags, seed=0):
        return Run(name, fashion_mnist_run(overrides=overrides, steps=steps, scale=scale, seed=seed),
                   {**tags, "seed": seed}, test_split=scale.test_split)

    seeds = BASE_SEEDS[:1] if size == "quick" else BASE_SEEDS
    runs = [run(f"base-s{seed}", base, {"dimension": "base", "value": 0}, seed) for seed in seeds]
    runs += [run(f"{dim}-{value}", _scaled(base, dim, value), {"dimension": dim, "value": value})
             for dim, values in scales.items() for value in values]
    return runs


def _scaled(base: dict, dim: str, value: int) -> dict:
    return dict(base) if dim == "base" else {**base, dim: value, **_heads(dim, value)}


def longer_run(size: str, dim: str, value: int) -> Run:
    scale = scale_of(size)
    config = fashion_mnist_run(overrides=_scaled(BASE, dim, value), scale=scale,
                               steps=epochs_to_steps(LONGER * EPOCHS, scale.batch_size))
    name = "base" if dim == "base" else f"{dim}-{value}"
    return Run(f"{name}-x{LONGER}", config, {"dimension": dim, "value": value, "seed": 0, "epochs": LONGER * EPOCHS},
               test_split=scale.test_split)


def extend(size: str, rows: list[dict]) -> list[Run]:
    """The arms of each finding not reproduced after the grid's epochs, trained longer."""
    if size != "default":
        return []
    return [longer_run(size, *arm) for f in findings(rows) if f.verdict == "not reproduced"
            for arm in LONGER_PAIRS.get(f.claim, ())]



def _heads(dim: str, value: int) -> dict:
    """Keep the head width at 32 (or 64 at paper scale) when the width changes."""
    if dim != "width":
        return {}
    return {"num_heads": max(1, value // (64 if value >= 384 else 32))}


def draw(rows: list[dict], path) -> None:
    rows, longer = split_longer(rows, EPOCHS)
    fig, (left, right) = figure(2)
    base_row = next((r for r in rows if r["dimension"] == "base"), None)
    for ax, metric, label in ((left, "test_top1", "test top-1 (%)"), (right, "fewshot5", "5-shot linear (%)")):
        base_mean = spread_of(rows, metric, dimension="base")
        for dim in dict.fromkeys(r["dimension"] for r in rows if r["dimension"] != "base"):
            pts = sorted([(r["train_pflops"], 100 * r[metric]) for r in rows if r["dimension"] == dim]
                         + ([(base_row["train_pflops"], 100 * base_mean.mean)] if base_row else []))
            ax.plot(*zip(*pts), marker="o", label=dim)
        if base_row:
            ax.errorbar([base_row["train_pflops"]], [100 * base_mean.mean], yerr=[[100 * (base_mean.mean - base_mean.low)],
                        [100 * (base_mean.high - base_mean.mean)]], fmt="o", color="k", capsize=3, zorder=5,
                        label=f"base (n={base_mean.n}, seed range)")
        if longer:
            ax.scatter([r["train_pflops"] for r in longer], [100 * r[metric] for r in longer], marker="o",
                       facecolors="none", edgecolors="k", zorder=5, label=f"{LONGER * EPOCHS} epochs (seed 0)")
            for r in longer:
                ax.annotate(arm_name(r["dimension"], r["value"]), (r["train_pflops"], 100 * r[metric]), fontsize=7,
                            ha="center", xytext=(0, 5), textcoords="offset points")
        compute_axis(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower center", ncol=2)  # the longer runs sit at the top
    save(fig, path, "Scaling one dimension at a time (cf. the paper's Figure 8)")


def arm_name(dim: str, value: int) -> str:
    if dim == "base":
        return f"patch {BASE['patch_size']} (the base)"
    return f"patch {value}" if dim == "patch_size" else f"{dim} {value}"


def summarise(rows: list[dict]) -> str:
    rows, longer = split_longer(rows, EPOCHS)
    base = spread_of(rows, "test_top1", dimension="base")
    lines = []
    for r in rows:
        if r["dimension"] == "base":
            if r["seed"] == 0:
                lines.append(["base", "-", f"{r['params']:,}", f"{r['train_pflops']:.3f}", base.text(),
                              pct(r.get("fewshot5"))])
            continue
        lines.append([r["dimension"], r["value"], f"{r['params']:,}", f"{r['train_pflops']:.3f}",
                      pct(r["test_top1"]), pct(r.get("fewshot5"))])
    text = ", ".join(f"{k} {v}" for k, v in BASE.items())
    out = markdown_table(["dimension", "value", "params", "training PFLOPs", "test top-1 %", "5-shot % (seed 0)"],
                         lines) + f"\n\nBase model (default size): {text}; each row changes one setting of it."
    if longer:
        out += f"\n\nTrained {LONGER}x longer ({LONGER * EPOCHS} epochs, seed 0), the arms of a finding not " \
               f"reproduced after {EPOCHS} epochs:\n\n" + markdown_table(
                   ["arm", "training PFLOPs", f"test top-1 % after {LONGER * EPOCHS} epochs",
                    f"after {EPOCHS} epochs", "5-shot %"],
                   [[arm_name(r["dimension"], r["value"]), f"{r['train_pflops']:.3f}", pct(r["test_top1"]),
                     spread_of(rows, "test_top1", dimension=r["dimension"], value=r["value"]).text(),
                     pct(r.get("fewshot5"))] for r in longer])
    return out


def findings(rows: list[dict]) -> list[Finding]:
    rows, longer = split_longer(rows, EPOCHS)
    base = spread_of(rows, "test_top1", dimension="base")
    noise = seed_noise([base])
    scaled = {(r["dimension"], r["value"]): spread_of(rows, "test_top1", dimension=r["dimension"], value=r["value"])
              for r in rows if r["dimension"] != "base"}
    if base is None or not scaled:
        return []
    gain = {dim: max(s.mean for (d, _), s in scaled.items() if d == dim) - base.mean
            for dim in {d for d, _ in scaled}}
    out = []
    if {"depth", "width"} <= set(gain):
        deeper, wider = scaled.get(("depth", max(SCALES["depth"]))), scaled.get(("width", max(SCALES["width"])))
        out.append(Finding("Scaling depth helps more than scaling width",
                           f"gain over the base: depth {100 * gain['depth']:+.2f}, width {100 * gain['width']:+.2f} "
                           f"points (base {base.text()})", verdict_better(deeper, wider, noise)))
    small_patch = scaled.get(("patch_size", min(SCALES["patch_size"])))
    if small_patch is not None:
        out.append(Finding("Smaller patches (longer sequences) help", f"patch {min(SCALES['patch_size'])}: "
                           f"{small_patch.text()}, base (patch {BASE['patch_size']}) {base.text()}",
                           verdict_better(small_patch, base, noise)))
    trained_longer = [longer_finding(f, longer, noise) for f in out]
    return out + [f for f in trained_longer if f is not None]


def longer_finding(finding: Finding, longer: list[dict], noise: float) -> Finding | None:
    """The verdict on `finding` from its pair trained longer, judged by the base's seed range."""
    pair = LONGER_PAIRS.get(finding.claim)
    stats = [spread_of(longer, "test_top1", dimension=d, value=v) for d, v in pair or ()]
    if not stats or None in stats:
        return None
    (winner, loser), names = stats, [arm_name(*arm) for arm in pair]
    return Finding(f"... {finding.claim[0].lower()}{finding.claim[1:]}: trained {LONGER}x longer ({LONGER * EPOCHS} "
                   f"epochs, seed 0)",
                   f"{names[0]} {pct(winner.mean)}, {names[1]} {pct(loser.mean)}: "
                   f"{100 * (winner.mean - loser.mean):+.2f} points; seed range of the base {100 * noise:.2f}",
                   verdict_better(winner, loser, noise))


STUDY = Study(
    name="dimensions",
    title="Scaling the dimensions of a ViT one at a time",
    paper="Figure 8 (Appendix D.2)",
    question="Which dimension (depth, width, MLP width, patch size) buys the most accuracy per unit of compute?",
    grid=grid, draw=draw, summarise=summarise, findings=findings, extend=extend,
    budget={"quick": f"{QUICK_STEPS} steps of 64 per run, a tiny base.",
            "default": f"every run {EPOCHS} epochs of 54,000 images at batch 128, AdamW lr 1e-3 cosine, fp32; three "
                       f"seeds of the base give the seed range; the two arms of a finding not reproduced are trained "
                       f"{LONGER}x longer (seed 0).",
            "paper": "ViT-B/16 base scaled per Appendix D.2, 7 epochs of JFT-300M each."},
    paper_numbers="""
Figure 8 (5-shot ImageNet against pre-training compute, JFT-300M; base ViT-B/16-like): scaling the depth gives
the largest improvements (clear up to 64 layers, diminishing after 16); scaling the width gives the smallest;
decreasing the patch size (longer sequences) improves robustly without adding parameters. Compute is a good
predictor of performance across the variants.
""")
