"""Helpers for the serving tests: a tiny checkpoint, a server on 127.0.0.1 in a thread, plain HTTP calls."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
import time
import uuid

import numpy as np
import torch
from PIL import Image

from conftest import tiny
from vitlab import create_model, save_pretrained

NAMES = ["ant", "bee", "cat", "dog", "eel"]


def tiny_checkpoint(directory, **overrides):
    model = create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=16, **overrides))
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a head that is not all zeros, so classes differ
    return save_pretrained(model, directory, label_names=NAMES[:model.num_classes])


def assert_same_predictions(got, want, abs=1e-5):
    import pytest

    assert [p["index"] for p in got] == [p["index"] for p in want]
    assert [p["label"] for p in got] == [p["label"] for p in want]
    assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in want], abs=abs)


def image_bytes(seed: int, size=(30, 24), fmt="PNG", mode="RGB") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@contextlib.contextmanager
def serving(app, timeout_s: float = 20.0):
    """Run `app` with uvicorn on 127.0.0.1 at a free port in a background thread; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 30.0):
    """(status, headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        kind = response.getheader("content-type", "")
        return response.status, dict(response.getheaders()), json.loads(data) if "json" in kind else data
    finally:
        conn.close()


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def predict_raw(port: int, data: bytes, query: str = "", **kwargs):
    return call(port, "POST", f"/v1/predict{query}", data, {"Content-Type": "application/octet-stream"}, **kwargs)
