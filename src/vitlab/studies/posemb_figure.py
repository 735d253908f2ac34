"""Each trained variant's position-embedding similarity, as the paper's Figure 7 (centre) draws it."""

from __future__ import annotations

import torch


def similarity_panels(fig, rows: list[dict], variants: list[str], *, out_dir, ncols: int) -> None:
    """One small panel per variant: cosine similarity of the centre patch's embedding with every patch's."""
    from ..checkpoints import load_pretrained
    from ..inspection.posemb import posemb_similarity

    by_variant = {}
    for r in rows:
        if r["task"] == "fashion_mnist" and r.get("run_dir") and r["posemb"] not in by_variant:
            by_variant[r["posemb"]] = out_dir / r["run_dir"]
    shown = [v for v in variants if v in by_variant]
    if not shown:
        return
    grid = fig.add_gridspec(2, ncols)[1, :].subgridspec(1, len(shown))
    for i, variant in enumerate(shown):
        ax = fig.add_subplot(grid[0, i])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(variant, fontsize=9)
        try:
            sim = posemb_similarity(load_pretrained(by_variant[variant]))
        except (ValueError, NotImplementedError) as e:  # "none" has no table to compare
            ax.text(0.5, 0.5, str(e).split(":")[0][:40], ha="center", va="center", fontsize=7, wrap=True)
            continue
        sim = torch.as_tensor(sim)
        gh, gw = sim.shape[:2]
        ax.imshow(sim[gh // 2, gw // 2].numpy(), cmap="viridis", vmin=-1, vmax=1)
