"""A small HTTP server on 127.0.0.1 for download tests: plain files, Range requests, failures on demand, and the
Hugging Face Hub's file layout (`/{repo}/resolve/{revision}/{filename}` with the headers huggingface_hub reads).

Each test starts its own server (port 0, a daemon thread) and stops it; every request is logged, so a test can
check what the client asked for. Nothing here reaches beyond the loopback interface.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the one commit every Hub repository here is at


@dataclass
class Behaviour:
    drop_after: int | None = None  # close the connection after this many body bytes (once per `drops`)
    drops: int = 0
    fail_with: int | None = None  # answer this status `fails` times before serving
    fails: int = 0
    ignore_range: bool = False


@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> contents
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    hub: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> {filename: contents}
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    served: Served  # set on the subclass each server makes
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        s = self.served
        with s.lock:
            s.log.append((self.command, self.path, self.headers.get("Range")))
            behaviour = s.behaviours.get(self.path)
            if behaviour and behaviour.fails > 0:
                behaviour.fails -= 1
                return self.status_only(behaviour.fail_with)
        hub = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        if hub:
            return self.answer_hub(hub[1], hub[2], hub[3], body)
        data = s.files.get(self.path)
        if data is None:
            return self.status_only(404)
        self.send_file(data, body, behaviour or Behaviour())

    def answer_hub(self, repo: str, revision: str, filename: str, body: bool) -> None:
        files = self.served.hub.get(repo)
        if files is None:
            return self.status_only(404, {"X-Error-Code": "RepoNotFound"})
        if revision not in ("main", COMMIT):
            return self.status_only(404, {"X-Error-Code": "RevisionNotFound"})
        if filename not in files:
            return self.status_only(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest()
        self.send_file(data, body, Behaviour(), {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})

    def status_only(self, code: int, headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_file(self, data: bytes, body: bool, behaviour: Behaviour, headers: dict | None = None) -> None:
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not behaviour.ignore_range:
            start = int(match[1])
            if start >= len(data):
                return self.status_only(416, {"Content-Range": f"bytes */{len(data)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not body:
            return
        payload = data[start:]
        with self.served.lock:
            drop = behaviour.drops > 0 and behaviour.drop_after is not None
            if drop:
                behaviour.drops -= 1
        if drop:
            self.wfile.write(payload[:behaviour.drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class LocalServer:
    """`with LocalServer() as server:` ... `server.url("/file")`; `server.served` holds files and the log."""

    def __init__(self):
        self.served = Served()
        handler = type("BoundHandler", (Handler,), {"served": self.served})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        return [r for r in self.served.log if path is None or r[1] == path]
