"""Downloading files into vitlab's cache: resumable, verified, never half-written under the final name.

    cache: $VITLAB_CACHE, else $XDG_CACHE_HOME/vitlab, else ~/.cache/vitlab
    offline: VITLAB_OFFLINE=1 (or HF_HUB_OFFLINE=1): the cache only; an absent file is one clear error

A download streams into `NAME.part` beside the destination. When the connection drops, the next attempt (after
a short back-off, or the next run) asks the server for the rest with an HTTP Range request and appends it; a
server that ignores Range sends the whole file again, which replaces the part. Only a complete file whose size
matches the server's and whose checksum (where one is known) matches is renamed to its final name, so a file
under the final name is always whole. Checkpoints and data sets (vitlab.data) share this one downloader.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .errors import VitlabError

CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # worth another try; any other HTTP error is final
TRANSIENT = (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError)


class DownloadError(VitlabError, ValueError):
    """A file that could not be fetched or failed its check; the message names the URL and the reason."""


def cache_root() -> Path:
    base = os.environ.get("VITLAB_CACHE")
    if base:
        return Path(base).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vitlab"


def cache_dir(name: str) -> Path:
    """A folder of vitlab's cache (e.g. 'checkpoints', 'fashion-mnist')."""
    return cache_root() / name


def is_offline() -> bool:
    """VITLAB_OFFLINE=1 or HF_HUB_OFFLINE=1: use what is cached, never the network."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("VITLAB_OFFLINE", "HF_HUB_OFFLINE"))


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | Path, *, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, retries: int = 4, backoff: float = 1.0, timeout: float = 60,
             progress: bool | None = None, verify=None) -> Path:
    """`dest`, fetched from `url` unless it is already there. Raises DownloadError (one line) on failure.

    `size`/`sha256`/`md5`, where known, are checked before the file gets its final name; the server's own
    length always is. Transient failures (connection reset, time-out, 5xx, 429) are retried `retries` times,
    resuming from what arrived, with back-off `backoff * 2**attempt` seconds. `progress=None` shows a bar
    on a terminal only. `verify(path)`, if given, says what is wrong with the whole download (or None): a file
    it refuses is deleted, never cached.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    if is_offline():
        raise DownloadError(f"{url}: not in the cache ({dest}) and offline mode is on (VITLAB_OFFLINE / "
                            "HF_HUB_OFFLINE); fetch it once online with `vitlab download`, or unset the variable")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(dest.parent):  # one process fetches; the others then find the file cached
        if dest.is_file():
            return dest
        part = dest.with_name(dest.name + ".part")
        for attempt in range(retries + 1):
            try:
                total = fetch_into(url, part, timeout, progress)
                break
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUS or attempt == retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}{tries}") from None
            except TRANSIENT as e:
                if attempt == retries:
                    kept = part.stat().st_size if part.exists() else 0
                    raise DownloadError(f"{url}: {describe(e)} (after {attempt + 1} tries; the {kept} bytes received "
                                        f"are kept in {part} and the next try resumes from there)") from None
            time.sleep(backoff * 2**attempt)
        check(url, part, expected_size=size if size is not None else total, sha256=sha256, md5=md5)
        problem = verify(part) if verify is not None else None
        if problem:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: {problem}; file refused (nothing cached)")
        os.replace(part, dest)
        return dest


@contextmanager
def exclusive(folder: Path):
    """An advisory lock (flock) on the destination's folder while a file is fetched, so two processes never
    write one `.part` (it leaves no lock file behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    return f"{type(e).__name__}: {e}".rstrip(": ")


def fetch_into(url: str, part: Path, timeout: float, progress: bool | None) -> int | None:
    """Append the rest of `url` to `part` (all of it if `part` is absent); the file's full length if told."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "vitlab", "Accept-Encoding": "identity"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing after `start`: the part is already whole
            return content_range_total(e.headers.get("Content-Range")) or start
        raise
    with response:
        if start and response.status == 206:
            total = content_range_total(response.headers.get("Content-Range"))
            mode = "ab"
        else:  # 200: the server sends everything (it ignored Range, or there was nothing to resume)
            start, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name.removesuffix(".part"),
                                           disable=None if progress is None else not progress, leave=False) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:  # the server closed early without an error: resume on the next try
        raise http.client.IncompleteRead(b"", total - got)
    return total


def content_range_total(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (value or "").strip())
    return int(match[1]) if match else None


def check(url: str, part: Path, *, expected_size: int | None, sha256: str | None, md5: str | None) -> None:
    """Refuse (and delete) a download of the wrong length or checksum: it is never given its final name."""
    got = part.stat().st_size
    if expected_size is not None and got != expected_size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: received {got} bytes, expected {expected_size}; file refused")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and (digest := file_digest(part, algorithm)) != expected.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: checksum mismatch: expected {algorithm} {expected}, got {digest}; "
                                "file refused")
