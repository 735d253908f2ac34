"""Figure 5: accuracy against pre-training compute for ViT, BiT ResNets and hybrids, with the Pareto front.

The paper: ViT needs about 2-4x less compute than a ResNet for the same transfer accuracy; hybrids beat pure
ViT at small sizes and the gap vanishes for larger ones. Compute is counted over the images each run actually
saw (studies.measure): forward FLOPs x 3 x images.
"""

from __future__ import annotations

from statistics import mean

from .core import Finding, Run, Study, epochs_to_steps, fashion_mnist_run, paper_run, scale_of
from .families import PAPER, SCALED, TINY
from .plots import compute_scatter, figure, save
from .report import markdown_table, pareto_front, pct, seed_noise, spread_of, verdict_better, verdict_tie

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
            # a second seed of each family's largest model gives the seed range the verdicts judge by
            for seed in [0, 1] if size == "default" and i == len(variants) - 1 else [0]:
                config = fashion_mnist_run(model=name, overrides=overrides, steps=steps, scale=scale, seed=seed)
                runs.append(Run(f"{family.lower()}-{i}-s{seed}", config, {"family": family, "size": i, "seed": seed},
                                test_split=scale.test_split))
    return runs


def _wider(family: str, overrides: dict) -> dict:
    if family == "BiT":
        return {**overrides, "width_factor": 1.0}
    return {**overrides, "width": 2 * overrides["width"], "mlp_dim": 2 * overrides["mlp_dim"]}


def per_model(rows: list[dict]) -> list[dict]:
    """One row per model (family and size), its metrics averaged over seeds, with `spread`: test top-1's Spread."""
    out = []
    for family, size in dict.fromkeys((r["family"], r["size"]) for r in rows):
        runs = [r for r in rows if (r["family"], r["size"]) == (family, size)]
        averaged = {key: mean(float(r[key]) for r in runs) if all(r.get(key) is not None for r in runs) else None
                    for key in ("train_pflops", "test_top1", "fewshot5")}
        out.append({**runs[0], **averaged, "run": f"{family.lower()}-{size}",
                    "spread": spread_of(runs, "test_top1")})
    return out


def draw(rows: list[dict], path) -> None:
    models = per_model(rows)
    fig, (left, right) = figure(2)
    compute_scatter(left, models, y="test_top1")
    left.set(ylabel="test top-1 (%)")
    compute_scatter(right, models, y="fewshot5")
    right.set(ylabel="5-shot linear accuracy (%)")
    save(fig, path, "Accuracy against training compute (cf. the paper's Figure 5)")


def summarise(rows: list[dict]) -> str:
    models = per_model(rows)
    front = {models[i]["run"] for i in pareto_front([(m["train_pflops"], m["test_top1"]) for m in models])}
    lines = [[m["family"], m["run"], f"{m['params']:,}", f"{m['gflops_per_image']:.4f}", f"{m['train_pflops']:.3f}",
              m["spread"].text(), pct(m.get("fewshot5")), "yes" if m["run"] in front else ""] for m in models]
    table = markdown_table(["family", "model", "params", "GFLOPs / image", "training PFLOPs",
                            "test top-1 % (mean ±half the seed range)", "5-shot %", "on the top-1 Pareto front"], lines)
    if any(m["spread"].n > 1 for m in models):
        table += "\n\nEach family's largest model is trained with two seeds; the largest of their seed ranges is " \
                 "the noise every verdict judges by."
    return table


def findings(rows: list[dict]) -> list[Finding]:
    """Figure 5's readings at our scale: who is on the Pareto front at the top end, and hybrid against ViT at the
    small and the large end."""
    models = per_model(rows)
    by_family = {f: [m for m in models if m["family"] == f] for f in dict.fromkeys(m["family"] for m in models)}
    if not {"ViT", "BiT"} <= set(by_family):
        return []
    noise = seed_noise([m["spread"] for m in models])
    front = [models[i] for i in pareto_front([(m["train_pflops"], m["test_top1"]) for m in models])]
    best = {f: max(ms, key=lambda m: m["test_top1"]) for f, ms in by_family.items()}
    transformer = max((best[f] for f in ("ViT", "Hybrid") if f in best), key=lambda m: m["test_top1"])
    out = [Finding("ViT (or the hybrid) gives the best accuracy for a given training compute at the top end",
                   "Pareto front, cheapest first: " + ", ".join(f"{m['run']} {pct(m['test_top1'])}" for m in front)
                   + f"; best {transformer['run']} {transformer['spread'].text()}, best BiT "
                   f"{best['BiT']['run']} {best['BiT']['spread'].text()}; seed range {100 * noise:.2f}",
                   verdict_better(transformer["spread"], best["BiT"]["spread"], noise))]
    if "Hybrid" in by_family and len(by_family["Hybrid"]) == len(by_family["ViT"]) > 1:
        (vit_small, *_, vit_large), (hyb_small, *_, hyb_large) = by_family["ViT"], by_family["Hybrid"]
        out += [Finding("The hybrid beats the ViT at the smallest size",
                        f"{hyb_small['run']} {hyb_small['spread'].text()}, {vit_small['run']} "
                        f"{vit_small['spread'].text()}; seed range {100 * noise:.2f}",
                        verdict_better(hyb_small["spread"], vit_small["spread"], noise)),
                Finding("... and the difference vanishes at the largest",
                        f"{hyb_large['run']} {hyb_large['spread'].text()}, {vit_large['run']} "
                        f"{vit_large['spread'].text()}", verdict_tie(hyb_large["spread"], vit_large["spread"], noise))]
    return out


STUDY = Study(
    name="scaling",
    title="Accuracy against training compute: ViT, ResNet and hybrid",
    paper="Figure 5 (Section 4.4)",
    question="Which family gives the most accuracy per unit of training compute?",
    grid=grid, draw=draw, summarise=summarise, findings=findings,
    budget={"quick": f"{QUICK_STEPS} steps of 64, two tiny sizes per family.",
            "default": f"every model trained for {EPOCHS} epochs of 54,000 images at batch 128, AdamW lr 1e-3 cosine, "
                       "fp32; three sizes per family, one seed (two for each family's largest); compute = forward FLOPs x 3 x images seen.",
            "paper": "7 epochs of JFT-300M at batch 4096 for every model of Figure 5."},
    paper_numbers="""
Figure 5 (average of five transfer tasks and ImageNet against total pre-training exaFLOPs, JFT-300M): ViT uses
about 2-4x less compute than the ResNets for the same performance (averaged over the five data sets); the hybrids
beat pure ViT at small computational budgets, and the difference vanishes for larger models; ViT does not appear
to saturate within the range tried.
""")
