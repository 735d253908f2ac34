"""The page the server shows at /: plain HTML, CSS and JavaScript in one file (no CDN: it works offline)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def page_html() -> str:
    return resources.files("vitlab.serving").joinpath("page.html").read_text(encoding="utf-8")
