"""Finding data on disk, and downloading it with a checksum check when it is not there."""
import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from .errors import DataError

log = logging.getLogger(__name__)


def cache_dir(name: str) -> Path:
    """The user cache for a data set: $VITLAB_CACHE, else $XDG_CACHE_HOME/vitlab, else ~/.cache/vitlab."""
    base = os.environ.get("VITLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitlab"
    return Path(base) / name


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None, timeout: float = 60) -> Path:
    """Fetch url to dest (atomically), refusing it unless its md5/sha256 match."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {e}") from None
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected and (got := file_digest(tmp, algorithm)) != expected.lower():
            tmp.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}: expected {algorithm} {expected}, got {got}; file refused")
    tmp.replace(dest)
    return dest
