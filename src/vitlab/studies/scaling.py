"""Figure 5: accuracy against pre-training compute for ViT, BiT ResNets and hybrids, with the Pareto front.

The paper: ViT needs about 2-4x less compute than a ResNet for the same transfer accuracy; hybrids beat pure
ViT at small sizes and the gap vanishes for larger ones. Compute is counted over the images each run actually
saw (studies.measure): forward FLOPs x 3 x images.
"""

from __future__ import annotations

from statistics import mean

from .core import (LONGER, Finding, Run, Study, epochs_to_steps, fashion_mnist_run, paper_run, scale_of,
                   split_longer)
from .families import PAPER, SCALED, TINY
from .plots import FAMILY_STYLE, compute_scatter, figure, save
from .report import markdown_table, pareto_front, pct, seed_noise, spread_of, verdict_better, verdict_tie

EPOCHS, QUICK_STEPS = 1.5, 15
FRONT = "ViT (or the hybrid) gives the best accuracy for a given training compute at the top end"
VANISH = "... and the difference vanishes at the largest"


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


def longer_run(size: str, family: str, index: int) -> Run:
    """Model `index` of `family` trained LONGER times the grid's epochs (seed 0)."""
    scale = scale_of(size)
    name, overrides = SCALED[family][index]
    config = fashion_mnist_run(model=name, overrides=overrides, scale=scale,
                               steps=epochs_to_steps(LONGER * EPOCHS, scale.batch_size))
    return Run(f"{family.lower()}-{index}-x{LONGER}", config,
               {"family": family, "size": index, "seed": 0, "epochs": LONGER * EPOCHS}, test_split=scale.test_split)


def extend(size: str, rows: list[dict]) -> list[Run]:
    """The two arms of each finding not reproduced, trained longer: does the result come from the few epochs?"""
    if size != "default":
        return []
    models = per_model(split_longer(rows, EPOCHS)[0])
    arms = dict.fromkeys((m["family"], m["size"]) for f in findings(rows) if f.verdict == "not reproduced"
                         for m in longer_arms(f.claim, models))
    return [longer_run(size, family, index) for family, index in arms]


def longer_arms(claim: str, models: list[dict]) -> list[dict]:
    """The models a finding is judged by: the best transformer and the best BiT for the front, the largest
    hybrid and ViT for the vanishing difference."""
    if claim == FRONT:
        return list(front_arms(models))
    if claim == VANISH:
        return [[m for m in models if m["family"] == family][-1] for family in ("Hybrid", "ViT")]
    return []



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


def front_arms(models: list[dict]) -> tuple[dict, dict]:
    """The most accurate transformer (ViT or hybrid) and the most accurate BiT."""
    best = {f: max((m for m in models if m["family"] == f), key=lambda m: m["test_top1"], default=None)
            for f in ("ViT", "Hybrid", "BiT")}
    transformer = max((m for m in (best["ViT"], best["Hybrid"]) if m), key=lambda m: m["test_top1"])
    return transformer, best["BiT"]


def draw(rows: list[dict], path) -> None:
    rows, longer = split_longer(rows, EPOCHS)
    models = per_model(rows)
    fig, (left, right) = figure(2)
    for ax, metric, label in ((left, "test_top1", "test top-1 (%)"), (right, "fewshot5", "5-shot linear accuracy (%)")):
        compute_scatter(ax, models, y=metric)
        for m in models:  # error bars: the seed range of each model trained with two seeds
            s = spread_of([r for r in rows if (r["family"], r["size"]) == (m["family"], m["size"])], metric)
            if s is not None and s.n > 1:
                ax.errorbar([m["train_pflops"]], [100 * s.mean], yerr=[[100 * (s.mean - s.low)], [100 * (s.high - s.mean)]],
                            fmt="none", ecolor=FAMILY_STYLE[m["family"]]["color"], capsize=3)
        for r in longer:
            if r.get(metric) is not None:
                ax.scatter([r["train_pflops"]], [100 * r[metric]], marker=FAMILY_STYLE[r["family"]]["marker"],
                           facecolors="none", edgecolors=FAMILY_STYLE[r["family"]]["color"], zorder=5)
                ax.annotate(f"{r['run']} ({LONGER * EPOCHS:g} epochs)", (r["train_pflops"], 100 * r[metric]),
                            fontsize=7, ha="right", xytext=(-6, 4), textcoords="offset points")
        ax.set(ylabel=label)
        ax.legend(fontsize=8, loc="center right")  # the lower corners hold the smallest and the largest ViT
    save(fig, path, "Accuracy against training compute (cf. the paper's Figure 5)")


def summarise(rows: list[dict]) -> str:
    rows, longer = split_longer(rows, EPOCHS)
    models = per_model(rows)
    front = {models[i]["run"] for i in pareto_front([(m["train_pflops"], m["test_top1"]) for m in models])}
    lines = [[m["family"], m["run"], f"{m['params']:,}", f"{m['gflops_per_image']:.4f}", f"{m['train_pflops']:.3f}",
              m["spread"].text(), pct(m.get("fewshot5")), "yes" if m["run"] in front else ""] for m in models]
    table = markdown_table(["family", "model", "params", "GFLOPs / image", "training PFLOPs",
                            "test top-1 % (mean ±half the seed range)", "5-shot %", "on the top-1 Pareto front"], lines)
    if any(m["spread"].n > 1 for m in models):
        table += "\n\nEach family's largest model is trained with two seeds; the largest of their seed ranges is " \
                 "the noise every verdict judges by."
    if longer:
        table += f"\n\nTrained {LONGER}x longer ({LONGER * EPOCHS:g} epochs, seed 0), the arms of the findings " \
                 f"not reproduced after {EPOCHS:g} epochs:\n\n" + markdown_table(
                     ["model", "training PFLOPs", f"test top-1 % after {LONGER * EPOCHS:g} epochs",
                      f"after {EPOCHS:g} epochs", "5-shot %"],
                     [[r["run"], f"{r['train_pflops']:.3f}", pct(r["test_top1"]),
                       spread_of(rows, "test_top1", family=r["family"], size=r["size"]).text(), pct(r.get("fewshot5"))]
                      for r in longer])
    return table


def findings(rows: list[dict]) -> list[Finding]:
    """Figure 5's readings at our scale: who is on the Pareto front at the top end, and hybrid against ViT at the
    small and the large end."""
    rows, longer = split_longer(rows, EPOCHS)
    models = per_model(rows)
    by_family = {f: [m for m in models if m["family"] == f] for f in dict.fromkeys(m["family"] for m in models)}
    if not {"ViT", "BiT"} <= set(by_family):
        return []
    noise = seed_noise([m["spread"] for m in models])
    front = [models[i] for i in pareto_front([(m["train_pflops"], m["test_top1"]) for m in models])]
    transformer, bit = front_arms(models)
    out = [Finding(FRONT, "Pareto front, cheapest first: " + ", ".join(f"{m['run']} {pct(m['test_top1'])}" for m in front)
                   + f"; best {transformer['run']} {transformer['spread'].text()}, best BiT "
                   f"{bit['run']} {bit['spread'].text()}; seed range {100 * noise:.2f}",
                   verdict_better(transformer["spread"], bit["spread"], noise))]
    trained_longer = {r["family"]: r for r in longer}
    if {transformer["family"], "BiT"} <= set(trained_longer):
        t, b = trained_longer[transformer["family"]], trained_longer["BiT"]
        out.append(Finding(f"... the best transformer against the best BiT, {LONGER_TEXT}", _pair(t, b, noise),
                           verdict_better(spread_of([t], "test_top1"), spread_of([b], "test_top1"), noise)))
    if "Hybrid" in by_family and len(by_family["Hybrid"]) == len(by_family["ViT"]) > 1:
        (vit_small, *_, vit_large), (hyb_small, *_, hyb_large) = by_family["ViT"], by_family["Hybrid"]
        out += [Finding("The hybrid beats the ViT at the smallest size",
                        f"{hyb_small['run']} {hyb_small['spread'].text()}, {vit_small['run']} "
                        f"{vit_small['spread'].text()}; seed range {100 * noise:.2f}",
                        verdict_better(hyb_small["spread"], vit_small["spread"], noise)),
                Finding(VANISH, f"{hyb_large['run']} {hyb_large['spread'].text()}, {vit_large['run']} "
                        f"{vit_large['spread'].text()}", verdict_tie(hyb_large["spread"], vit_large["spread"], noise))]
    if {"Hybrid", "ViT"} <= set(trained_longer):
        h, v = trained_longer["Hybrid"], trained_longer["ViT"]
        out.append(Finding(f"... the largest hybrid against the largest ViT, {LONGER_TEXT}", _pair(h, v, noise),
                           verdict_tie(spread_of([h], "test_top1"), spread_of([v], "test_top1"), noise)))
    return out


LONGER_TEXT = f"trained {LONGER}x longer ({LONGER * EPOCHS:g} epochs, seed 0)"


def _pair(a: dict, b: dict, noise: float) -> str:
    return (f"{a['run']} {pct(a['test_top1'])} ({a['train_pflops']:.3f} PFLOPs), {b['run']} {pct(b['test_top1'])} "
            f"({b['train_pflops']:.3f} PFLOPs): {100 * (a['test_top1'] - b['test_top1']):+.2f} points; seed range "
            f"{100 * noise:.2f}")


STUDY = Study(
    name="scaling",
    title="Accuracy against training compute: ViT, ResNet and hybrid",
    paper="Figure 5 (Section 4.4)",
    question="Which family gives the most accuracy per unit of training compute?",
    grid=grid, draw=draw, summarise=summarise, findings=findings, extend=extend,
    budget={"quick": f"{QUICK_STEPS} steps of 64, two tiny sizes per family.",
            "default": f"every model trained for {EPOCHS} epochs of 54,000 images at batch 128, AdamW lr 1e-3 cosine, "
                       "fp32; three sizes per family, one seed (two for each family's largest); compute = forward FLOPs x 3 x images seen; "
                       f"the two arms of a finding not reproduced are trained {LONGER}x longer (seed 0).",
            "paper": "7 epochs of JFT-300M at batch 4096 for every model of Figure 5."},
    paper_numbers="""
Figure 5 (average of five transfer tasks and ImageNet against total pre-training exaFLOPs, JFT-300M): ViT uses
about 2-4x less compute than the ResNets for the same performance (averaged over the five data sets); the hybrids
beat pure ViT at small computational budgets, and the difference vanishes for larger models; ViT does not appear
to saturate within the range tried.
""")
