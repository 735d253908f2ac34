"""The training recipes that ship with vitlab: `vitlab train NAME` runs one, `vitlab recipes` lists them.

A recipe is a TOML config in this folder, named after its file (`fashion-mnist.toml` is `fashion-mnist`), with a
one-line `description`. base/ holds what several recipes share; a recipe names it as any config names its
base, relative to itself (`base = "base/finetune.toml"`), so an installed recipe resolves as it does on disk.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

FOLDER = Path(__file__).parent


def names() -> list[str]:
    return sorted(path.stem for path in FOLDER.glob("*.toml"))


def path_of(name: str) -> Path | None:
    """The recipe called `name`, or None when there is none."""
    return FOLDER / f"{name}.toml" if name in names() else None


def description(name: str) -> str:
    return tomllib.loads((FOLDER / f"{name}.toml").read_text(encoding="utf-8")).get("description", "")
