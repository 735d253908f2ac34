"""Figure 5: accuracy against pre-training compute for ViT, BiT ResNets and hybrids, with the Pareto front.

The paper: ViT needs about 2-4x less compute than a ResNet for the same transfer accuracy; hybrids beat pure
ViT at small sizes and the gap vanishes for larger ones. Compute is counted over the images each run actually
saw (studies.measure): forward FLOPs x 3 x images.
"""

from __future__ import annotations

from .core import Finding, Run, Study, epochs_to_steps, fashion_mnist_run, paper_run, scale_of
from .families import PAPER, SCALED, TINY
from .plots import compute_scatter, figure, save
from .report import markdown_table, pareto_front, pct

EPOCHS, QUICK_STEPS = 1.5, 15


def grid(size: str) -> list[Run]:
    if size == "paper":  # 7 epochs of JFT-300M, the paper's upstream budget for most of Figure 5
        return [Run(f"{family}-{name.replace('/', '').replace('+', '')}".lower(),
                    paper_run(name, steps=7 * 300_000_000 // 4096), {"family": family, "model": name, "size": i})
                for family, names in PAPER.items() for i, name in enumerate(names)]
    runs = []
    for family, variants in SCALED.items():
        if size == "quick":
            tiny_name, tiny = TINY[family]
            variants = [(tiny_name, tiny), (tiny_name, _wider(family, tiny))]
        scale = scale_of(size)
        steps = QUICK_STEPS if size == "quick" else epochs_to_steps(EPOCHS, scale.batch_size)
        for i, (name, overrides) in enumerate(variants):
            config = fashion_mnist_run(model=name, overrides=overrides, steps=steps, scale=scale)
            runs.append(Run(f"{family.lower()}-{i}", config, {"family": family, "size": i},
                            test_split=scale.test_split))
    return runs


def _wider(family: str, overrides: dict) -> dict:
    if family == "BiT":
        return {**overrides, "width_factor": 1.0}
    return {**overrides, "width": 2 * overrides["width"], "mlp_dim": 2 * overrides["mlp_dim"]}


def draw(rows: list[dict], path) -> None:
    fig, (left, right) = figure(2)
    compute_scatter(left, rows, y="test_top1")
    left.set(ylabel="test top-1 (%)")
    compute_scatter(right, rows, y="fewshot5")
    right.set(ylabel="5-shot linear accuracy (%)")
    save(fig, path, "Accuracy against training compute (cf. the paper's Figure 5)")


def summarise(rows: list[dict]) -> str:
    front = {rows[i]["run"] for i in pareto_front([(r["train_pflops"], r["test_top1"]) for r in rows])}
    lines = [[r["family"], r["run"], f"{r['params']:,}", f"{r['gflops_per_image']:.4f}", f"{r['train_pflops']:.3f}",
              pct(r["test_top1"]), pct(r.get("fewshot5")), "yes" if r["run"] in front else ""] for r in rows]
    return markdown_table(["family", "run", "params", "GFLOPs / image", "training PFLOPs", "top-1 %", "5-shot %",
                           "on the top-1 Pareto front"], lines)


def findings(rows: list[dict]) -> list[Finding]:
    """Figure 5's reading, at the compute of our largest runs: which family is on the Pareto front."""
    if len({r["family"] for r in rows}) < 2:
        return []
    front = [rows[i] for i in pareto_front([(r["train_pflops"], r["test_top1"]) for r in rows])]
    families = [r["family"] for r in front]
    ours = "Pareto front, cheapest first: " + ", ".join(f"{r['run']} {pct(r['test_top1'])}" for r in front)
    vit_vs_bit = ("reproduced" if families[-1] in ("ViT", "Hybrid") else "not reproduced")
    return [Finding("ViT (or the hybrid) gives the best accuracy for a given training compute at the top end "
                    "(one seed per point: read with the other studies' seed ranges, about 0.2-0.5 points)",
                    ours, vit_vs_bit)]


STUDY = Study(
    name="scaling",
    title="Accuracy against training compute: ViT, ResNet and hybrid",
    paper="Figure 5 (Section 4.4)",
    question="Which family gives the most accuracy per unit of training compute?",
    grid=grid, draw=draw, summarise=summarise, findings=findings,
    budget={"quick": f"{QUICK_STEPS} steps of 64, two tiny sizes per family.",
            "default": f"every model trained for {EPOCHS} epochs of 54,000 images at batch 128, AdamW lr 1e-3 cosine, "
                       "fp32; three sizes per family, one seed; compute = forward FLOPs x 3 x images seen.",
            "paper": "7 epochs of JFT-300M at batch 4096 for every model of Figure 5."},
    paper_numbers="""
Figure 5 (average of five transfer tasks and ImageNet against total pre-training exaFLOPs, JFT-300M): ViT uses
about 2-4x less compute than the ResNets for the same performance (averaged over the five data sets); the hybrids
beat pure ViT at small computational budgets, and the difference vanishes for larger models; ViT does not appear
to saturate within the range tried.
""")
