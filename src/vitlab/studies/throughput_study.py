"""Figure 12 (Appendix D.5): inference speed and the largest batch that fits, against input size.

The paper (TPUv3, per core): ViT is comparable in speed to similar ResNets, and ViTs' memory efficiency lets
much larger batches fit at large inputs. Here images/s on this machine (torch threads as set) and the largest
batch under a memory cap, for both families.
"""

from __future__ import annotations

from .core import Run, Study
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


def grid(size: str) -> list[Run]:
    return [Run(f"{name.replace('/', '').lower()}-{px}px",
                dict(model=name, overrides=overrides, image_size=px, memory_cap_gb=MEMORY_CAP_GB[size],
                     batch=4 if size == "quick" else 8, seconds=0.5 if size == "quick" else 3.0),
                {"family": family, "model": name}, kind="throughput", fewshot=False)
            for family, name, overrides in MODELS[size] for px in IMAGE_SIZES[size]]


def draw(rows: list[dict], path) -> None:
    fig, (left, right) = figure(2)
    styles = {}
    for r in rows:
        styles.setdefault(r["model"], dict(marker="o" if r["family"] == "ViT" else "s",
                                           ls="-" if r["family"] == "ViT" else "--"))
    lines_by(left, rows, group="model", x="image_size", y="images_per_s", percent=False, styles=styles)
    left.set(xlabel="input size (px)", ylabel="images/s", yscale="log")
    lines_by(right, rows, group="model", x="image_size", y="max_batch", percent=False, styles=styles)
    cap = rows[0]["memory_cap_gb"] if rows else 0
    right.set(xlabel="input size (px)", ylabel=f"largest batch in {cap:g} GiB", yscale="log")
    save(fig, path, "Inference throughput and largest batch against input size (cf. the paper's Figure 12)")


def summarise(rows: list[dict]) -> str:
    lines = [[r["model"], r["image_size"], f"{r['gflops_per_image']:.2f}", f"{r['images_per_s']:.1f}",
              f"{r['mb_per_image']:.2f}", f"{r['max_batch']:,}"] for r in rows]
    device = rows[0]["device"] if rows else "?"
    threads = rows[0]["threads"] if rows else "?"
    return markdown_table(["model", "input px", "GFLOPs / image", "images/s", "MiB / image", "largest batch"],
                          lines) + f"\n\nMeasured on {device} with {threads} torch threads, bf16 autocast, batch " \
                                   f"{rows[0]['batch'] if rows else '?'} for images/s."


STUDY = Study(
    name="throughput",
    title="Inference throughput and memory against input size",
    paper="Figure 12 (Appendix D.5)",
    question="How do speed and the largest batch that fits scale with the input size for ViTs and ResNets?",
    grid=grid, draw=draw, summarise=summarise,
    budget={"quick": "two tiny models at 32 and 64 px, 0.5 s of timing each.",
            "default": "3 s of timing per point after warm-up; memory cap 4 GiB.",
            "paper": "the paper's models at 64-512 px; memory cap 16 GiB (one TPUv3 core)."},
    paper_numbers="""
Figure 12 (TPUv3, per core, input sizes up to 512 px): ViT models are comparable in speed to similar ResNets,
and the largest batch per core that fits is larger for the ViTs, most of all at large inputs: large ViT models
are more memory-efficient than ResNet models. (The paper gives this as a figure only.)
""")
