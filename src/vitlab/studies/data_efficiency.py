"""Figures 3 and 4: ViT against ResNets (and the hybrid) as the pre-training set grows.

The paper: with little data the BiT ResNets win; with JFT-300M the large ViTs win ("the convolutional inductive
bias is useful for smaller datasets, but for larger ones, learning the relevant patterns directly from data is
sufficient, even beneficial"). Here each family of comparable size is trained on nested subsets of
Fashion-MNIST's training set and measured on the whole test set, fine-tuned (trained) top-1 and frozen 5-shot.
"""

from __future__ import annotations

from .core import (TRAIN_IMAGES, Finding, Run, Study, fashion_mnist_run, paper_run, scale_of, steps_for)
from .families import COMPARABLE, PAPER, TINY
from .plots import figure, lines_by, save
from .report import group_mean, markdown_table, pct, seed_noise, spread_of, verdict_better

# Training images -> epochs: the small subsets are trained to convergence, the larger ones for fewer passes.
EPOCHS = {1_000: 50, 3_000: 25, 10_000: 10, TRAIN_IMAGES: 4}
SEEDS = {1_000: [0, 1, 2], 3_000: [0, 1, 2], 10_000: [0, 1, 2], TRAIN_IMAGES: [0]}
# Lee et al.'s two small-data fixes, alone and together: family -> what it adds to the ViT
SMALL_DATA_ARMS = {"ViT+SPT": "shifted patch tokenization", "ViT+LSA": "locality self-attention",
                   "ViT+SPT+LSA": "SPT and LSA together"}
QUICK_SUBSETS, QUICK_STEPS = [300, 1000], 15
# tables and figure list the ViT and its fixes first, then the convolutional families
ORDER = ["ViT", *SMALL_DATA_ARMS, "BiT", "Hybrid"]


def grid(size: str) -> list[Run]:
    if size == "paper":  # Figure 4: random JFT subsets, 5-shot linear ImageNet accuracy
        return [Run(f"{family}-{name.replace('/', '')}-{n}M".lower(),
                    paper_run(name, steps=7 * n * 1_000_000 // 4096, train_split=f"train[:{n * 1_000_000}]"),
                    {"family": family, "model": name, "subset": n * 1_000_000})
                for family, names in PAPER.items() for name in names[:4] for n in (9, 30, 90, 300)]
    scale = scale_of(size)
    families = TINY if size == "quick" else COMPARABLE
    subsets = {n: [0] for n in QUICK_SUBSETS} if size == "quick" else SEEDS
    runs = []
    for family, (name, overrides) in families.items():
        for n, seeds in subsets.items():
            steps = QUICK_STEPS if size == "quick" else steps_for(EPOCHS[n] * n, scale.batch_size)
            for seed in seeds:
                # nested subsets: train[:n] takes the first n of one fixed permutation of the training images
                config = fashion_mnist_run(model=name, overrides=overrides, steps=steps, scale=scale, seed=seed,
                                           train_split=f"train[:{n}]")
                runs.append(Run(f"{family.lower().replace('+', '-')}-{n}-s{seed}", config, {"family": family, "subset": n, "seed": seed},
                                test_split=scale.test_split))
    return runs


def in_order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: ORDER.index(r["family"]) if r["family"] in ORDER else len(ORDER))


def draw(rows: list[dict], path) -> None:
    from matplotlib.ticker import NullFormatter

    rows = in_order(rows)
    fig, (left, right) = figure(2)
    subsets = sorted({r["subset"] for r in rows})
    for ax, y, label in ((left, "test_top1", "test top-1 (%)"), (right, "fewshot5", "5-shot linear accuracy (%)")):
        lines_by(ax, rows, group="family", x="subset", y=y, logx=True)
        ax.set_xticks(subsets, [f"{n:,}" for n in subsets])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="training images (nested subsets of Fashion-MNIST train)", ylabel=label)
    save(fig, path, "Data efficiency (cf. the paper's Figures 3 and 4)")


def summarise(rows: list[dict]) -> str:
    """Test top-1 per family and subset with its seed range, then frozen 5-shot accuracy (means)."""
    families = list(dict.fromkeys(r["family"] for r in in_order(rows)))
    subsets = sorted({r["subset"] for r in rows})
    shot5 = group_mean(rows, ("family", "subset"), "fewshot5")
    params = {r["family"]: r["params"] for r in rows}

    def table(cell) -> str:
        return markdown_table(["training images", "epochs"] + families,
                              [[f"{n:,}", EPOCHS.get(n, "-")] + [cell(f, n) for f in families] for n in subsets])

    def top1(f, n) -> str:
        stats = spread_of(rows, "test_top1", family=f, subset=n)
        return "-" if stats is None else stats.text()

    sizes = ", ".join(f"{f} {params[f]:,}" for f in families)
    return (f"Test top-1 (%), mean ±half the range over seeds (n seeds):\n\n{table(top1)}\n\n"
            f"Frozen 5-shot linear accuracy (%), mean over seeds:\n\n"
            f"{table(lambda f, n: pct(shot5.get((f, n), (None,))[0]))}\n\nParameters: {sizes}.")


def findings(rows: list[dict]) -> list[Finding]:
    fixes = [small_data_fix(rows, arm, fix) for arm, fix in SMALL_DATA_ARMS.items()]
    return resnet_against_vit(rows) + [f for f in fixes if f is not None]


def resnet_against_vit(rows: list[dict]) -> list[Finding]:
    """The paper's two readings, on the smallest and the largest subset that both families have finished."""
    subsets = sorted({r["subset"] for r in rows if r["family"] == "ViT"} & {r["subset"] for r in rows if r["family"] == "BiT"})
    if len(subsets) < 2:
        return []
    small, large = subsets[0], subsets[-1]
    stats = {(f, n): spread_of(rows, "test_top1", family=f, subset=n) for f in ("ViT", "BiT") for n in (small, large)}
    noise = seed_noise(list(stats.values()))
    gap = {n: stats[("BiT", n)].mean - stats[("ViT", n)].mean for n in (small, large)}
    narrows = gap[large] < gap[small] - noise
    return [
        Finding(f"The ResNet (BiT) beats the ViT on little data ({small:,} images)",
                f"BiT {stats[('BiT', small)].text()}, ViT {stats[('ViT', small)].text()}",
                verdict_better(stats[("BiT", small)], stats[("ViT", small)], noise)),
        Finding(f"The gap narrows as data grows ({small:,} -> {large:,} images)",
                f"BiT - ViT: {100 * gap[small]:+.2f} -> {100 * gap[large]:+.2f} points",
                "reproduced" if narrows else "tie within noise" if abs(gap[large] - gap[small]) <= noise
                else "not reproduced"),
    ]


def small_data_fix(rows: list[dict], arm: str, fix: str) -> Finding | None:
    """Lee et al.'s claim for one fix, judged on every subset with seeds: the arm against the plain ViT."""
    seeded = sorted({r["subset"] for r in rows if r["family"] == arm and r.get("seed", 0) > 0})
    vit = {n: spread_of(rows, "test_top1", family="ViT", subset=n) for n in seeded}
    pairs = {n: (spread_of(rows, "test_top1", family=arm, subset=n), vit[n]) for n in seeded if vit[n] is not None}
    if not pairs:
        return None
    verdicts = [verdict_better(a, v) for a, v in pairs.values()]
    ours = "; ".join(f"{n:,}: {100 * (a.mean - v.mean):+.2f} (seed range {100 * seed_noise([a, v]):.2f})"
                     for n, (a, v) in pairs.items())
    wins, losses = verdicts.count("reproduced"), verdicts.count("not reproduced")
    verdict = (verdicts[0] if len(set(verdicts)) == 1 else
               f"reproduced on {wins} of {len(verdicts)} subsets" if wins and not losses else
               f"not reproduced on {losses} of {len(verdicts)} subsets" if losses and not wins else "mixed")
    return Finding(f"Lee et al. (2021): {fix} lifts the ViT on small training sets",
                   f"{arm} - ViT, points, by training images: {ours}", verdict)


STUDY = Study(
    name="data-efficiency",
    title="Data efficiency: ViT against ResNets as the training set grows",
    paper="Figures 3 and 4 (Section 4.2)",
    question="Does the ResNet's inductive bias win on small data and the ViT catch up as data grows?",
    grid=grid, draw=draw, summarise=summarise, findings=findings,
    budget={"quick": f"{QUICK_STEPS} steps of 64 per run, tiny models (a test of the machinery, not a result).",
            "default": "subsets of 1,000 / 3,000 / 10,000 / 54,000 training images trained for "
                       + " / ".join(str(e) for e in EPOCHS.values()) + " epochs at batch 128, AdamW lr 1e-3 "
                       "cosine, fp32, no augmentation; three seeds on the three small subsets. Families: the ViT, a BiT "
                       "ResNet, the hybrid, and the ViT with shifted patch tokens (SPT), locality "
                       "self-attention (LSA) or both.",
            "paper": "about 7 epochs of each JFT subset at batch 4096 (Adam, the paper's upstream recipe)."},
    paper_numbers="""
Figure 3 (pre-training on ImageNet-1k, ImageNet-21k or JFT-300M, then ImageNet fine-tuning): trained on
ImageNet-1k the BiT ResNets beat ViT-B and ViT-L; on ImageNet-21k they are about level; on JFT-300M the large
ViTs win. Figure 4 (5-shot linear ImageNet accuracy after pre-training on random JFT subsets of 9M, 30M, 90M and
300M images; ViT-B/32, B/16, L/32, L/16 against ResNet50x1 and ResNet152x2): the ResNets are ahead at 9M and the
ViTs overtake them as the subset grows, ViT-L/16 best at 300M. The paper reads this as "the convolutional
inductive bias is useful for smaller datasets, but for larger ones, learning the relevant patterns directly from
data is sufficient, even beneficial". (Shapes of the curves, not values: the paper gives these as figures only.)
""")
