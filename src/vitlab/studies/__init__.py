"""The paper's experiments as commands: `vitlab study NAME` (see studies.core for what a study is)."""

from __future__ import annotations

from . import axial, data_efficiency, dimensions, optimizers, pooling, posemb, scaling, throughput
from .core import SIZES, Run, Study

STUDIES: dict[str, Study] = {s.name: s for s in (
    data_efficiency.STUDY, scaling.STUDY, dimensions.STUDY, posemb.STUDY, pooling.STUDY, optimizers.STUDY,
    axial.STUDY, throughput.STUDY)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        import difflib

        from ..errors import UsageError

        close = difflib.get_close_matches(name, list(STUDIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown study {name!r}{hint} (`vitlab study --list` shows them: {', '.join(STUDIES)})")
    return STUDIES[name]


__all__ = ["SIZES", "STUDIES", "Run", "Study", "get_study"]
