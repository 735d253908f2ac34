"""The one error a request can end in: an HTTP status and a message naming what was wrong."""

from __future__ import annotations


class RequestError(Exception):
    """Raised anywhere while handling a request; the app answers {"error": message} with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
