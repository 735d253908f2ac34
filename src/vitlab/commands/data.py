"""`vitlab data SPEC`: what a data source holds, and which of its files are unreadable."""

from ..data.__main__ import add_arguments, run

__all__ = ["add_arguments", "run"]
