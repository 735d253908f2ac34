"""A study's outputs: results.csv, the figure, and REPORT.md with the paper's numbers beside ours."""

from __future__ import annotations

import csv
import io
import os
import platform
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

from ..fileio import atomic_write_text
from .core import Study


def write_csv(rows: list[dict], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: less or equal cost and more accuracy (or equal accuracy
    at strictly less cost). Sorted by cost. `points` are (cost, accuracy)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def group_mean(rows: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, tuple[float, float, int]]:
    """{key values: (mean, std, n)} of `value` over the rows sharing `keys` (seeds averaged)."""
    groups = defaultdict(list)
    for row in rows:
        if row.get(value) is not None:
            groups[tuple(row[k] for k in keys)].append(float(row[value]))
    return {k: (mean(v), stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def markdown_table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def write_report(study: Study, size: str, rows: list[dict], out: Path, *, command: str) -> Path:
    """results.csv, the figure and REPORT.md in `out`; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    write_csv(rows, out / "results.csv")
    figure = out / f"{study.name}.png"
    study.draw(rows, figure)
    total_s = sum(float(r.get("study_wall_s") or 0.0) for r in rows)
    text = [
        f"# {study.title}",
        "",
        f"The paper: {study.paper}. {study.question}",
        "",
        f"Made by `{command}` (size `{size}`, {len(rows)} runs, {total_s / 60:.1f} minutes of run time, on "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch threads per run as the "
        "runner set them).",
    ]
    if size in study.budget:
        text += ["", f"Budget: {study.budget[size]}"]
    text += ["", "## Ours", "", study.summarise(rows), "", f"![{study.name}]({figure.name})", "",
             "## The paper", "", study.paper_numbers.strip(), "",
             "Every run is an ordinary run directory under `runs/`; `results.csv` holds every number above."]
    atomic_write_text(out / "REPORT.md", "\n".join(text) + "\n")
    return out / "REPORT.md"
