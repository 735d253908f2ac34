"""What one request may take from the others: a place among the predictions in flight, and its body.

`InFlightLimit` answers 503 at once when `max_in_flight` predictions are already being read, decoded or run;
`BodyLimit` refuses a body over the limit (413) or one that stalls (408). (Decoding memory is bounded by the
app's decoding threads: each decodes one image at a time, reduced at once to what the model needs.)
"""

from __future__ import annotations

import asyncio
import json

from .errors import RequestError

PREDICT_PATH = "/v1/predict"


class InFlightLimit:
    """ASGI middleware: at most `max_in_flight` requests to /v1/predict at once; more are answered 503 with a
    JSON message before their body is read. The page, the model card and /healthz are never refused."""

    def __init__(self, app, max_in_flight: int):
        self.app, self.max_in_flight, self.in_flight = app, max_in_flight, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            return await send_error(send, 503, f"the server is busy: {self.in_flight} predictions in flight "
                                               f"(its limit); try again shortly", retry_after_s=1)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyLimit:
    """ASGI middleware: refuses a body over `max_bytes` (413, by Content-Length before reading a byte, or
    as soon as a chunked upload passes it) and a client that stalls mid-upload for `timeout_s` (408)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await send_error(send, 413, f"the request body ({declared.decode(errors='replace')} bytes) "
                                               f"is more than the limit of {self.max_bytes:,} bytes")
        received, body_done = 0, False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:
                return await receive()  # after the body: waiting for a disconnect is not a stall
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(408, f"the upload stalled: nothing received for {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise RequestError(413, f"the request body is more than the limit of {self.max_bytes:,} bytes")
            return message

        await self.app(scope, limited_receive, send)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def send_error(send, status: int, message: str, retry_after_s: int | None = None) -> None:
    """A JSON error straight from ASGI middleware, the connection closed after it (its body is left unread)."""
    body = error_body(message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
