"""A study's outputs: results.csv, the figure, and REPORT.md with the paper's numbers beside ours."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from ..fileio import atomic_write_text
from .core import Study


RESULTS_JSON = "results.json"
INDEX_START, INDEX_END = "<!-- verdicts: written by `vitlab study --index` -->", "<!-- /verdicts -->"


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


@dataclass(frozen=True)
class Spread:
    """A value over seeds: the mean, and the range (largest minus smallest) that the seeds span."""
    mean: float
    low: float
    high: float
    n: int

    @property
    def range(self) -> float:
        return self.high - self.low

    def text(self, scale: float = 100.0) -> str:
        if self.n < 2:
            return f"{scale * self.mean:.2f} (n=1)"
        return f"{scale * self.mean:.2f} ±{scale * self.range / 2:.2f} (n={self.n})"


def spread_of(rows: list[dict], metric: str, /, **where) -> Spread | None:
    """The spread of `metric` over the rows whose tags equal `where` (seeds pooled); None if there are none.
    (`metric` is positional-only, so any tag, `value` included, can be matched.)"""
    values = [float(r[metric]) for r in rows
              if r.get(metric) is not None and all(r.get(k) == v for k, v in where.items())]
    if not values:
        return None
    return Spread(mean(values), min(values), max(values), len(values))


def seed_noise(spreads: list[Spread | None]) -> float:
    """The largest seed range among the groups that have two or more seeds (0 if none has)."""
    return max((s.range for s in spreads if s is not None and s.n >= 2), default=0.0)


def verdict_better(winner: Spread | None, loser: Spread | None, noise: float | None = None) -> str:
    """Verdict on "`winner` beats `loser`": a difference inside the seed noise (by default the larger seed range
    of the two) is a tie, never a finding."""
    if winner is None or loser is None:
        return "not run"
    noise = seed_noise([winner, loser]) if noise is None else noise
    if noise <= 0:
        return "no seed spread to judge by"
    difference = winner.mean - loser.mean
    if abs(difference) <= noise:
        return "tie within noise"
    return "reproduced" if difference > 0 else "not reproduced"


def verdict_tie(a: Spread | None, b: Spread | None, noise: float) -> str:
    """Verdict on "`a` and `b` perform the same"."""
    if a is None or b is None:
        return "not run"
    if noise <= 0:
        return "no seed spread to judge by"
    return "reproduced (tie within noise)" if abs(a.mean - b.mean) <= noise else "not reproduced"


def pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def markdown_table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def findings_table(findings) -> str:
    return markdown_table(["the paper's finding", "ours (mean ±half the seed range, %)", "verdict"],
                          [[f.claim, f.ours, f.verdict] for f in findings])


def write_report(study: Study, size: str, rows: list[dict], out: Path, *, command: str,
                 planned: int | None = None) -> Path:
    """results.csv, the figure and REPORT.md in `out` (from the runs finished so far); returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    write_csv(rows, out / "results.csv")
    atomic_write_text(out / RESULTS_JSON, json.dumps(rows, indent=1) + "\n")  # typed, for the verdict index
    figure = out / f"{study.name}.png"
    study.draw(rows, figure)
    total_s = sum(float(r.get("study_wall_s") or 0.0) for r in rows)
    planned = planned or len(rows)
    progress = "" if planned == len(rows) else f" — {len(rows)} of {planned} runs finished so far"
    text = [
        f"# {study.title}",
        "",
        f"The paper: {study.paper}. {study.question}",
        "",
        f"Made by `{command}` (size `{size}`, {len(rows)} runs{progress}, {total_s / 60:.1f} minutes of run time, on "
        f"{cpu_name()}, {os.cpu_count()} CPU cores).",
    ]
    if size in study.budget:
        text += ["", f"Budget: {study.budget[size]}"]
    findings = study.findings(rows)
    if findings:
        text += ["", "## Verdict", "", findings_table(findings), "",
                 "A difference no larger than the seed range (the largest spread over seeds among the arms "
                 "compared) is a tie."]
    text += ["", "## Ours", "", study.summarise(rows), "", f"![{study.name}]({figure.name})", "",
             "## The paper", "", study.paper_numbers.strip(), "",
             "Every run is an ordinary run directory under `runs/`; `results.csv` holds every number above."]
    atomic_write_text(out / "REPORT.md", "\n".join(text) + "\n")
    return out / "REPORT.md"


def cpu_name() -> str:
    """The CPU's model name (Linux; else what the platform module says) and the vector instructions torch uses
    on it: "AMD EPYC (AVX2)". The same name can cover CPU generations of very different speed."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def verdict_index(studies: dict, folder: Path) -> str:
    """One table of every study's findings with our numbers and verdicts, from FOLDER/NAME/results.json."""
    lines = []
    for name, study in studies.items():
        path = folder / name / RESULTS_JSON
        link = f"[{name}]({name}/REPORT.md)" if (folder / name / "REPORT.md").is_file() else name
        if not path.is_file():
            lines.append([link, study.paper, "not run at the default size yet", "-"])
            continue
        rows = json.loads(path.read_text())
        for f in study.findings(rows) or [None]:
            if f is None:
                lines.append([link, study.paper, "see the report", "-"])
            else:
                lines.append([link, f.claim, f.ours, f"**{f.verdict}**"])
    return markdown_table(["study", "the paper's finding", "ours (mean ±half the seed range, %)", "verdict"], lines)


def write_index(studies: dict, folder: Path) -> Path:
    """Replace the verdict table between the markers of FOLDER/README.md (appended if it has none)."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.is_file() else "# Studies\n"
    table = f"{INDEX_START}\n{verdict_index(studies, folder)}\n{INDEX_END}"
    if INDEX_START in text and INDEX_END in text:
        before, rest = text.split(INDEX_START, 1)
        text = before + table + rest.split(INDEX_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    atomic_write_text(readme, text)
    return readme
