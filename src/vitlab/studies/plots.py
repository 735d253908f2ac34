"""Small drawing helpers the studies share (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from .report import group_mean, pareto_front

FAMILY_STYLE = {"ViT": dict(color="tab:blue", marker="o"), "BiT": dict(color="tab:orange", marker="s"),
                "Hybrid": dict(color="tab:green", marker="^"), "AxialViT": dict(color="tab:red", marker="D"),
                # the ViT with Lee et al.'s small-data fixes: the ViT's family of markers, dashed
                "ViT+SPT": dict(color="tab:purple", marker="v", linestyle="--"),
                "ViT+LSA": dict(color="tab:brown", marker="P", linestyle="--"),
                "ViT+SPT+LSA": dict(color="tab:cyan", marker="X", linestyle="--")}


def figure(ncols: int = 2, width: float = 5.2, height: float = 3.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def save(fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def lines_by(ax, rows: list[dict], *, group: str, x: str, y: str, label_fmt: str = "{}", percent: bool = True,
             logx: bool = False, styles: dict | None = None) -> None:
    """One line per value of `group`: mean of `y` (over seeds) against `x`, error bars where seeds differ."""
    for value in dict.fromkeys(r[group] for r in rows):
        stats = group_mean([r for r in rows if r[group] == value], (x,), y)
        if not stats:
            continue
        xs = sorted(stats)
        scale = 100 if percent else 1
        ys = [scale * stats[k][0] for k in xs]
        errs = [scale * stats[k][1] for k in xs]
        style = (styles or FAMILY_STYLE).get(value, {})
        ax.errorbar([k[0] for k in xs], ys, yerr=errs if any(errs) else None, label=label_fmt.format(value),
                    capsize=3, **style)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def compute_scatter(ax, rows: list[dict], *, y: str, group: str = "family", x: str = "train_pflops",
                    front: bool = True) -> None:
    """Accuracy against training compute, one colour per family, the Pareto front drawn over all points."""
    for value in dict.fromkeys(r[group] for r in rows):
        pts = [(r[x], 100 * r[y]) for r in rows if r[group] == value and r.get(y) is not None]
        if pts:
            ax.scatter(*zip(*pts), label=value, **{k: v for k, v in FAMILY_STYLE.get(value, {}).items()})
    pts = [(r[x], r[y]) for r in rows if r.get(y) is not None]
    if front and pts:
        idx = pareto_front(pts)
        ax.plot([pts[i][0] for i in idx], [100 * pts[i][1] for i in idx], "k--", lw=1, label="Pareto front")
    compute_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def compute_axis(ax) -> None:
    """A log x axis of training compute whose labels do not overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)  # no marker cut by the frame
    # label 1, 2 and 5 times each power of ten, not every minor tick (they overlap over less than a decade)
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5), numticks=30))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training compute (PFLOPs)")
