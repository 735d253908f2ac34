"""Each trained variant's position-embedding similarity, as the paper's Figure 7 (centre) draws it."""

from __future__ import annotations

import torch

LAYOUT = {"height_ratios": [1.3, 1], "hspace": 0.3}  # the accuracy bars above, these panels below


def similarity_panels(fig, rows: list[dict], variants: list[str], *, out_dir) -> None:
    """The lower half of `fig`: one panel per variant with a table of position embeddings (cosine similarity of
    the centre patch's embedding with every patch's, seed 0 on Fashion-MNIST), and a shared colour bar."""
    from ..checkpoints import load_pretrained
    from ..inspection.posemb import posemb_similarity

    maps, unkept = {}, []
    for r in rows:
        if r["task"] == "fashion_mnist" and r.get("seed", 0) == 0 and r["posemb"] not in maps:
            try:
                sim = torch.as_tensor(posemb_similarity(load_pretrained(out_dir / r["run_dir"])))
            except (ValueError, NotImplementedError):  # "none" and "relative" have no table of embeddings
                continue
            except FileNotFoundError:  # a run taken from exported results: its checkpoint is not kept
                unkept.append(r["posemb"])
                continue
            gh, gw = sim.shape[:2]
            maps[r["posemb"]] = sim[gh // 2, gw // 2].numpy()
    shown = [v for v in variants if v in maps]
    if not shown:
        return
    grid = fig.add_gridspec(2, 1, **LAYOUT)[1].subgridspec(1, len(shown) + 1, width_ratios=[1] * len(shown) + [0.08])
    for i, variant in enumerate(shown):
        ax = fig.add_subplot(grid[0, i])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{variant}: similarity to the centre patch", fontsize=8)
        image = ax.imshow(maps[variant], cmap="viridis", vmin=-1, vmax=1)
    fig.colorbar(image, cax=fig.add_subplot(grid[0, -1]), label="cosine similarity")
    missing = [v for v in variants if v not in maps and v not in unkept]
    notes = ([f"no table of embeddings to compare: {', '.join(missing)}"] if missing else []) + \
        ([f"checkpoint not kept: {', '.join(unkept)}"] if unkept else [])
    if notes:
        fig.text(0.5, 0.01, "; ".join(notes), ha="center", fontsize=8)
