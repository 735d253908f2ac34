"""The error a training config that cannot run raises (below the config reader, so that the objectives raise it
too)."""

from __future__ import annotations

from ..errors import VitlabError


class ConfigError(VitlabError, ValueError):
    """A training config that cannot run; the message names the key and what is wrong with it."""
