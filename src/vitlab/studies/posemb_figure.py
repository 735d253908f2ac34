"""Each trained variant's position-embedding similarity, as the paper's Figure 7 (centre) draws it."""

from __future__ import annotations

import torch

LAYOUT = {"height_ratios": [1.3, 1], "hspace": 0.5}  # the accuracy bars above, these panels below


LEARNED = {"learned_1d", "learned_2d"}  # the tables training changes; the others an untrained model shows as well


def similarity_panels(fig, rows: list[dict], variants: list[str], *, out_dir) -> None:
    """The lower half of `fig`: one panel per variant with a table of position embeddings (cosine similarity of
    the centre patch's embedding with every patch's, seed 0 on Fashion-MNIST, or the run trained longer where
    only its checkpoint is kept), and a shared colour bar."""
    from ..inspection.posemb import posemb_similarity

    maps, titles, unkept = {}, {}, []
    for r in sorted((r for r in rows if r["task"].startswith("fashion_mnist") and r.get("seed", 0) == 0),
                    key=lambda r: r["task"] != "fashion_mnist"):  # the grid's own epochs first
        variant = r["posemb"]
        if variant in maps:
            continue
        try:
            sim = torch.as_tensor(posemb_similarity(_model_of(out_dir / r["run_dir"], variant)))
        except (ValueError, NotImplementedError):  # "none" and "relative" have no table of embeddings
            continue
        except FileNotFoundError:  # a run taken from exported results: its checkpoint is not kept
            unkept.append(variant)
            continue
        gh, gw = sim.shape[:2]
        maps[variant] = sim[gh // 2, gw // 2].numpy()
        titles[variant] = variant + ("" if r["task"] == "fashion_mnist" else f" ({r['task'].split(', ')[-1]})")
    unkept = [v for v in dict.fromkeys(unkept) if v not in maps]
    shown = [v for v in variants if v in maps]
    if not shown:
        return
    grid = fig.add_gridspec(2, 1, **LAYOUT)[1].subgridspec(1, len(shown) + 1, width_ratios=[1] * len(shown) + [0.08])
    for i, variant in enumerate(shown):
        ax = fig.add_subplot(grid[0, i])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{titles[variant]}:\nsimilarity to the centre patch", fontsize=8)
        image = ax.imshow(maps[variant], cmap="viridis", vmin=-1, vmax=1)
    fig.colorbar(image, cax=fig.add_subplot(grid[0, -1]), label="cosine similarity")
    missing = [v for v in variants if v not in maps and v not in unkept]
    notes = ([f"no table of embeddings to compare: {', '.join(missing)}"] if missing else []) + \
        ([f"checkpoint not kept: {', '.join(unkept)}"] if unkept else [])
    if notes:
        fig.text(0.5, 0.01, "; ".join(notes), ha="center", fontsize=8)


def _model_of(run_dir, variant: str):
    """The run's trained model; where its checkpoint is not kept and training does not change the variant's table
    (or there is none), an untrained one of its shape."""
    from ..checkpoints import load_pretrained

    if (run_dir / "checkpoints").is_dir():
        return load_pretrained(run_dir)
    if variant in LEARNED:
        raise FileNotFoundError(f"{run_dir}: no checkpoints kept")
    from ..models.registry import create_model
    from ..training.checks import architecture
    from ..training.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    return create_model(cfg.model.name, **architecture(cfg))
