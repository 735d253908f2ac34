"""The connection limits uvicorn lacks: a deadline for every request's header, and a cap on open connections.

uvicorn closes a keep-alive connection idle between requests (its `timeout_keep_alive`) and refuses an
oversized header (h11's incomplete-event limit), but a connection that never finishes its header stays open,
and it accepts connections until the process runs out of file descriptors. `guarded_protocol` is uvicorn's
h11 protocol with both: a header not complete within `header_timeout_s` of its first byte (or of the
connection) is answered 408 and closed, and past `max_connections` the longest-idle connection (no request
being handled) is closed to make room, so idle or half-sent connections can neither pile up nor lock out the
clients that come next.
"""

from __future__ import annotations

import collections
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import error_body

WARN_EVERY_S = 10.0  # the log says the connection cap is reached at most this often


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """An H11Protocol subclass (uvicorn's `http=` setting) sharing one registry of this server's connections."""
    registry = ConnectionRegistry(max_connections)

    class GuardedH11Protocol(H11Protocol):
        header_deadline = None  # the TimerHandle closing this connection if its header is not complete

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.await_header()
            registry.add(self)

        def connection_lost(self, exc) -> None:
            registry.discard(self)
            self.header_received()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            registry.touch(self)
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a header still incomplete: its clock runs from its first byte
                self.await_header()
            else:
                self.header_received()

        def await_header(self) -> None:
            if self.header_deadline is None and not self.transport.is_closing():
                self.header_deadline = self.loop.call_later(header_timeout_s, self.header_timed_out)

        def header_received(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def header_timed_out(self) -> None:
            self.header_deadline = None
            if not self.transport.is_closing():
                close_with(self, 408, f"the request header was not complete within {header_timeout_s:g} s")

        def busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

    return GuardedH11Protocol


class ConnectionRegistry:
    """Open connections, least recently active first; adding one past the cap closes the longest-idle one
    (the newcomer itself when every other is busy answering a request)."""

    def __init__(self, max_connections: int):
        self.max_connections = max_connections
        self.open: collections.OrderedDict = collections.OrderedDict()
        self.last_warning = float("-inf")
        self.closed_since_warning = 0

    def add(self, protocol) -> None:
        self.open[protocol] = None
        if len(self.open) > self.max_connections:
            victim = next((p for p in self.open if p is not protocol and not p.busy()), protocol)
            self.discard(victim)
            if victim is protocol:
                close_with(victim, 503, f"the server has {self.max_connections} connections open, all busy")
            else:  # nothing asked on it (or half a header): closed as a keep-alive timeout closes it
                victim.transport.close()
            self.warn()

    def touch(self, protocol) -> None:
        if protocol in self.open:
            self.open.move_to_end(protocol)

    def discard(self, protocol) -> None:
        self.open.pop(protocol, None)

    def warn(self) -> None:
        """One log line per WARN_EVERY_S while the cap is hit, however many connections it closes."""
        self.closed_since_warning += 1
        now = time.monotonic()
        if now - self.last_warning >= WARN_EVERY_S:
            logging.getLogger("uvicorn.error").warning(
                "%d connections open (--max-connections): closed %d idle connection(s) to make room",
                self.max_connections, self.closed_since_warning)
            self.last_warning, self.closed_since_warning = now, 0


def close_with(protocol, status: int, message: str) -> None:
    """Answer a connection that has no request being handled with a JSON error, and close it."""
    body = error_body(message)
    reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
    protocol.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, reason, len(body)) + body)
    protocol.transport.close()
