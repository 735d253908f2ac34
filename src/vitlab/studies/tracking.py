"""A study in the experiment trackers (`vitlab study NAME --log tensorboard`): every training run of the study
logs there, tagged with the study's name, its size and the run's place on the study's axes, and grouped per
study: one TensorBoard log dir (OUT/tensorboard/RUN), one MLflow experiment, one W&B group."""

from __future__ import annotations

from pathlib import Path

from .core import Run


def log_table(study: str, size: str, run: Run, out: Path, trackers: list[str]) -> dict:
    """The [log] table of one study run."""
    group = f"study-{study}-{size}"
    return {"to": list(trackers), "name": run.name, "group": group,
            "tags": {"study": study, "size": size, **run.tags},
            "tensorboard": {"dir": str(Path(out) / "tensorboard" / run.name)}}


def with_tracking(runs: list[Run], study: str, size: str, out: Path, trackers: list[str]) -> list[Run]:
    """`runs`, each training run set to log to `trackers` (none: unchanged)."""
    if trackers:
        for run in runs:
            if run.kind == "train":
                run.config["log"] = log_table(study, size, run, out, trackers)
    return runs
