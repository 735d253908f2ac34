"""Data sets fetched through vitlab's one downloader (vitlab.download), its failures reported as DataError."""
from pathlib import Path

from .. import download as downloader
from .errors import DataError

cache_dir = downloader.cache_dir


def download(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None, timeout: float = 60) -> Path:
    """Fetch url to dest (resumable, atomic), refusing it unless its md5/sha256 match."""
    try:
        return downloader.download(url, dest, md5=md5, sha256=sha256, timeout=timeout)
    except downloader.DownloadError as e:
        raise DataError(f"download failed: {e}") from None
