"""The error a checkpoint that cannot be read, written or converted raises."""

from __future__ import annotations

from ..errors import VitlabError


class CheckpointError(VitlabError, ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file, the key and the shapes."""
