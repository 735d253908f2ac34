"""The configuration hash of every run every study can plan, at every size: the study cache's keys.

`python tests/study_hashes.py > tests/fixtures/study_hashes.json` records them; test_studies checks that a change
to how studies build their configs leaves every key (and so every cached result) as it was.
"""

from __future__ import annotations

import json

from vitlab.studies import SIZES, STUDIES
from vitlab.studies.runner import config_hash


def _rows_favouring(runs, edge: str) -> list[dict]:
    """Results rows whose best learning rate (per sweep) is the lowest, the highest or a middle rate tried."""
    rates = sorted({r.tags["lr"] for r in runs if "lr" in r.tags})
    best = {"low": rates[0], "high": rates[-1], "middle": rates[len(rates) // 2]}[edge] if rates else None
    return [{**r.tags, "val_top1": 1.0 if r.tags.get("lr") == best else 0.5} for r in runs if "lr" in r.tags]


def _rows_graded(runs) -> list[dict]:
    """Results rows in which every arm (a run's tags but its seed) scores above the arms before it in the grid,
    by more than its seeds spread: no arm ties with another."""
    def arm(run):
        return tuple(sorted((k, v) for k, v in run.tags.items() if k != "seed"))

    def score(run):
        return 0.5 + 0.001 * arms.index(arm(run)) + 0.0001 * run.tags.get("seed", 0)
    arms = list(dict.fromkeys(arm(r) for r in runs))
    return [{**r.tags, "val_top1": score(r), "test_top1": score(r)} for r in runs]


def planned(study, size: str) -> list:
    """The study's grid and every run its extensions can add (a sweep one step past either edge, more seeds, a
    pair of arms trained longer)."""
    runs = study.runs(size)
    for edge in ("low", "high", "middle"):
        runs += study.extend(size, _rows_favouring(runs, edge))
    return runs + study.extend(size, _rows_graded(study.runs(size)))


def all_hashes() -> dict:
    return {name: {size: {run.name: config_hash(run) for run in planned(study, size)} for size in SIZES}
            for name, study in STUDIES.items()}


if __name__ == "__main__":
    print(json.dumps(all_hashes(), indent=1, sort_keys=True))
