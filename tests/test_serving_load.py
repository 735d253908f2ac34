"""`vitlab serve` under hostile load, as a user would run it: its memory stays bounded and it keeps answering.

First, with as many uploads half sent as may be in flight, one more prediction is refused (503). Then at once,
for a few seconds: requests of flat 36-megapixel PNGs in parallel (each ~500 KB, 108 MB decoded), idle
sockets past the connection cap, and a header that never ends.
The server runs with its default memory limits; its peak resident memory (the kernel's VmHWM) must stay under
MEMORY_BOUND_MB, /healthz must answer throughout, and an ordinary request must get the answer it gets when
the server is idle.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")

from browser_support import vitlab_serve
from serving_support import assert_same_predictions, call, image_bytes, multipart, predict_raw, tiny_checkpoint

MEMORY_BOUND_MB = 1500  # peak resident memory of the server, with its default limits
FLAT_SIDE = 6000  # 36 megapixels
HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 48
DEFAULT_MAX_IN_FLIGHT = 8
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")]


def flat_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (FLAT_SIDE, FLAT_SIDE), colour).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class Storm:
    """Runs each hostile client in its own thread until stopped; collects what they saw."""

    def __init__(self, port: int):
        self.port, self.stop, self.threads, self.bounded = port, threading.Event(), [], []
        self.statuses: dict[str, list[int]] = {}
        self.errors: list[str] = []

    def client(self, name: str, request, rounds: int | None = None) -> None:
        def loop():
            done = 0
            while not self.stop.is_set() and (rounds is None or done < rounds):
                try:
                    self.statuses.setdefault(name, []).append(request())
                except Exception as e:  # noqa: BLE001 - any failure to get an answer is a finding
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
                done += 1

        self.threads.append(threading.Thread(target=loop, daemon=True))
        self.threads[-1].start()
        if rounds is not None:
            self.bounded.append(self.threads[-1])

    def join(self, timeout_s: float) -> None:
        """Until every client with a number of rounds is done (the others stop then)."""
        deadline = time.monotonic() + timeout_s
        for thread in self.bounded:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def post_files(port: int, files: list[tuple[str, bytes]]) -> int:
    body, headers = multipart(files)
    status, _, answer = call(port, "POST", "/v1/predict", body, headers, timeout=60)
    assert status == 200 or isinstance(answer, dict) and answer.get("error"), (status, answer)  # errors are JSON
    return status


def stalled_header(port: int) -> tuple[bytes, float]:
    """What the server answers a request header that stops halfway, and after how long."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ima")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer, time.monotonic() - started


def test_hostile_load_leaves_memory_bounded_and_the_server_answering(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    big = [flat_png((200, 30, 30)), flat_png((30, 30, 200))]
    ordinary = image_bytes(7)
    log = tmp_path / "serve.log"
    with vitlab_serve("--checkpoint", str(checkpoint), "--device", "cpu", "--precision", "fp32",
                      "--header-timeout", str(HEADER_TIMEOUT_S), "--max-connections", str(MAX_CONNECTIONS),
                      log=log) as (url, pid):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        idle_mb = memory_mb(pid, "VmRSS")
        calm = predict_raw(port, ordinary)
        assert calm[0] == 200
        assert_in_flight_limit(port, DEFAULT_MAX_IN_FLIGHT)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS + 20)]
        storm = Storm(port)
        for i in range(4):  # 2 x 36 MP each: within the per-request limit, so decoded
            storm.client("two flat 36 MP", lambda i=i: post_files(port, [(f"{i}-{j}.png", big[j]) for j in (0, 1)]),
                         rounds=1)
        for i in range(2):  # 16 x 36 MP each: over the per-request limit
            storm.client("sixteen flat 36 MP", lambda: post_files(port, [(f"{j}.png", big[j % 2]) for j in range(16)]),
                         rounds=3)
        storm.client("healthz", lambda: time.sleep(0.2) or urllib.request.urlopen(url + "healthz", timeout=5).status)
        storm.client("ordinary", lambda: ordinary_answer(port, ordinary, calm[2]))
        header_answer, header_s = stalled_header(port)
        print(f"header answered after {header_s:.1f} s", flush=True)
        storm.join(timeout_s=60)
        peak_mb = memory_mb(pid, "VmHWM")
        for sock in held:
            sock.close()
        status, _, health = call(port, "GET", "/healthz")
    lines = log.read_text().splitlines()
    print(f"\nvitlab serve under hostile load: peak memory {peak_mb:.0f} MB (idle {idle_mb:.0f} MB, bound "
          f"{MEMORY_BOUND_MB} MB); answers {summary(storm.statuses)}; {len(lines)} log lines")
    assert not storm.errors, storm.errors[:5]
    assert peak_mb < MEMORY_BOUND_MB, f"peak memory {peak_mb:.0f} MB over the bound of {MEMORY_BOUND_MB} MB"
    assert set(storm.statuses["healthz"]) == {200} and status == 200
    assert 200 in storm.statuses["two flat 36 MP"] and set(storm.statuses["sixteen flat 36 MP"]) <= {413, 503}
    assert storm.statuses["ordinary"] and set(storm.statuses["ordinary"]) == {200}
    assert header_answer.startswith(b"HTTP/1.1 408"), (header_answer, header_s)  # not left open (30 s socket timeout)
    assert health["batching"]["images"] >= 2
    assert not any("Traceback" in line for line in lines) and len(lines) < 20, lines[:20]


def assert_in_flight_limit(port: int, limit: int) -> None:
    """With `limit` uploads half sent, one more prediction is refused at once (503, JSON); /healthz is not."""
    uploads = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(limit)]
    try:
        for sock in uploads:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n\x89PNG")
        time.sleep(0.5)
        status, headers, answer = predict_raw(port, image_bytes(1), timeout=30)
        assert status == 503 and "busy" in answer["error"] and headers.get("retry-after") == "1", (status, answer)
        assert call(port, "GET", "/healthz")[0] == 200
    finally:
        for sock in uploads:
            sock.close()


def ordinary_answer(port: int, data: bytes, expected: list) -> int:
    """A small upload, sent again while refused as busy (503); its answer must be the calm server's."""
    for _ in range(100):
        status, _, answer = predict_raw(port, data, timeout=30)
        if status != 503:
            assert status == 200, (status, answer)
            assert_same_predictions(answer[0]["predictions"], expected[0]["predictions"])
            return status
        time.sleep(0.1)
    raise AssertionError("an ordinary request was refused as busy 100 times")


def summary(statuses: dict[str, list[int]]) -> str:
    return "; ".join(f"{name}: {json.dumps({s: codes.count(s) for s in sorted(set(codes))})}"
                     for name, codes in statuses.items())
