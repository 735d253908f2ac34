"""Errors raised by the data pipeline."""

from ..errors import VitlabError


class DataError(VitlabError, ValueError):
    """Data cannot be found or a setting selects nothing; raised before work starts."""


class BadImage(Exception):
    """One image could not be decoded. The loader skips it, logs its name and counts it."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason
