"""Figure 12 (Appendix D.5): inference speed and the largest batch that fits, against input size.

The paper (TPUv3, per core): ViT is comparable in speed to similar ResNets, and ViTs' memory efficiency lets
much larger batches fit at large inputs. Here images/s on this machine (torch threads as set) and the largest
batch under a memory cap, for both families.
"""

from __future__ import annotations

import math

from .core import Finding, Run, Study
from .plots import figure, lines_by, save
from .report import markdown_table

MODELS = {
    "quick": [("ViT", "ViT-Ti/16", {}), ("BiT", "BiT-R50x1", {"layers": [1, 1], "width_factor": 0.5})],
    "default": [("ViT", "ViT-Ti/16", {}), ("ViT", "ViT-S/16", {}), ("ViT", "ViT-B/32", {}), ("ViT", "ViT-B/16", {}),
                ("BiT", "BiT-R50x1", {}), ("BiT", "BiT-R101x1", {})],
    "paper": [("ViT", n, {}) for n in ("ViT-B/32", "ViT-B/16", "ViT-L/32", "ViT-L/16", "ViT-H/14")]
    + [("BiT", n, {}) for n in ("BiT-R50x1", "BiT-R50x3", "BiT-R101x1", "BiT-R101x3", "BiT-R152x2", "BiT-R152x4")],
}
IMAGE_SIZES = {"quick": [32, 64], "default": [64, 128, 224], "paper": [64, 128, 224, 384, 512]}
MEMORY_CAP_GB = {"quick": 1.0, "default": 4.0, "paper": 16.0}  # paper: a TPUv3 core's 16 GiB
PRECISION = "fp32"  # the same arithmetic on every CPU (bf16 is fast only where the CPU has bf16 instructions)


def grid(size: str) -> list[Run]:
    """Every model at every size with all the threads (speed and the largest batch), then with one thread (speed
    per core, as the paper reports it)."""
    timing = dict(batch=4 if size == "quick" else 8, seconds=0.5 if size == "quick" else 3.0,
                  precision=PRECISION)
    runs = [Run(f"{name.replace('/', '').lower()}-{px}px",
                dict(model=name, overrides=overrides, image_size=px, memory_cap_gb=MEMORY_CAP_GB[size], **timing),
                {"family": family, "model": name, "threads": "all"}, kind="throughput", fewshot=False)
            for family, name, overrides in MODELS[size] for px in IMAGE_SIZES[size]]
    if size != "paper":
        runs += [Run(f"{name.replace('/', '').lower()}-{px}px-1thread",
                     dict(model=name, overrides=overrides, image_size=px, max_batch=False, threads=1, **timing),
                     {"family": family, "model": name, "threads": 1}, kind="throughput", fewshot=False)
                 for family, name, overrides in MODELS[size] for px in IMAGE_SIZES[size]]
    return runs


def split_rows(rows: list[dict]) -> tuple[list[dict], dict]:
    """(the rows timed with every thread, {(model, px): images/s with one thread})."""
    per_core = {(r["model"], r["image_size"]): r["images_per_s"] for r in rows if r["run"].endswith("-1thread")}
    return [r for r in rows if not r["run"].endswith("-1thread")], per_core


def draw(rows: list[dict], path) -> None:
    fig, (left, middle, right) = figure(3, width=4.6)
    full, _ = split_rows(rows)
    single = [r for r in rows if r["run"].endswith("-1thread")]
    styles = {}
    for r in rows:
        styles.setdefault(r["model"], dict(marker="o" if r["family"] == "ViT" else "s",
                                           ls="-" if r["family"] == "ViT" else "--"))
    for ax, subset, title in ((left, full, f"{full[0]['threads'] if full else '?'} threads"),
                              (middle, single, "one thread (per core)")):
        lines_by(ax, subset, group="model", x="image_size", y="images_per_s", percent=False, styles=styles)
        ax.set(xlabel="input size (px)", ylabel="images/s", yscale="log", title=title)
    lines_by(right, full, group="model", x="image_size", y="max_batch", percent=False, styles=styles)
    cap = full[0]["memory_cap_gb"] if full else 0
    right.set(xlabel="input size (px)", ylabel=f"largest batch in {cap:g} GiB", yscale="log")
    save(fig, path, "Inference throughput and largest batch against input size (cf. the paper's Figure 12)")


def summarise(rows: list[dict]) -> str:
    full, per_core = split_rows(rows)
    lines = [[r["model"], r["image_size"], f"{r['gflops_per_image']:.2f}", f"{r['images_per_s']:.1f}",
              f"{per_core[(r['model'], r['image_size'])]:.1f}" if (r["model"], r["image_size"]) in per_core else "-",
              f"{r['mb_per_image']:.2f}", f"{r['max_batch']:,}"] for r in full]
    first = full[0] if full else {}
    return markdown_table(["model", "input px", "GFLOPs / image", f"images/s ({first.get('threads', '?')} threads)",
                           "images/s (1 thread)", "MiB / image", "largest batch"], lines) + \
        f"\n\nMeasured on {first.get('device', '?')}, {first.get('precision', '?')}, batch {first.get('batch', '?')} " \
        "for images/s (median of timed batches after warm-up), on an otherwise idle machine."


def nearest(rows: list[dict], to: dict, key: str) -> dict:
    """The row whose `key` is closest to `to`'s on a log scale (speeds and FLOPs compare as ratios)."""
    return min(rows, key=lambda r: abs(math.log(r[key] / to[key])))


def findings(rows: list[dict]) -> list[Finding]:
    """Each ResNet at the largest input against the ViT of nearest speed (for the batch that fits) and the ViT
    of nearest FLOPs (for speed): "similar" as the paper means it, not one fixed pair of unequal models."""
    full, _ = split_rows(rows)
    largest = max((r["image_size"] for r in full), default=None)
    vits = [r for r in full if r["family"] == "ViT" and r["image_size"] == largest]
    resnets = [r for r in full if r["family"] != "ViT" and r["image_size"] == largest]
    if not vits or not resnets:
        return []
    by_speed = [(nearest(vits, r, "images_per_s"), r) for r in resnets]
    by_flops = [(nearest(vits, r, "gflops_per_image"), r) for r in resnets]
    ratios = [v["images_per_s"] / r["images_per_s"] for v, r in by_flops]
    return [Finding(f"ViTs fit larger batches than ResNets of similar speed at large inputs ({largest} px)",
                    "; ".join(f"{v['model']} {v['max_batch']:,} ({v['images_per_s']:.1f} images/s) vs "
                              f"{r['model']} {r['max_batch']:,} ({r['images_per_s']:.1f} images/s)" for v, r in by_speed),
                    "reproduced" if all(v["max_batch"] > r["max_batch"] for v, r in by_speed) else "not reproduced"),
            Finding(f"ViT is comparable in speed to ResNets of similar compute ({largest} px)",
                    "; ".join(f"{v['model']} ({v['gflops_per_image']:.1f} GFLOPs) {ratio:.2f}x the images/s of "
                              f"{r['model']} ({r['gflops_per_image']:.1f} GFLOPs)"
                              for (v, r), ratio in zip(by_flops, ratios)) + "; one timing per point",
                    "reproduced" if min(ratios) >= 2 / 3 else "not reproduced")]


STUDY = Study(
    name="throughput",
    title="Inference throughput and memory against input size",
    paper="Figure 12 (Appendix D.5)",
    question="How do speed and the largest batch that fits scale with the input size for ViTs and ResNets?",
    grid=grid, draw=draw, summarise=summarise, findings=findings,
    budget={"quick": "two tiny models at 32 and 64 px, 0.5 s of timing each.",
            "default": "3 s of timing per point after warm-up, fp32, with every thread and with one; memory cap "
                       "4 GiB. Needs an idle machine.",
            "paper": "the paper's models at 64-512 px; memory cap 16 GiB (one TPUv3 core)."},
    paper_numbers="""
Figure 12 (TPUv3, per core, input sizes up to 512 px): ViT models are comparable in speed to similar ResNets,
and the largest batch per core that fits is larger for the ViTs, most of all at large inputs: large ViT models
are more memory-efficient than ResNet models. (The paper gives this as a figure only.)
""")
