"""Driving `vitlab serve`'s page in headless Chromium (Debian's chromium + chromium-driver) with Selenium.

Used by tests/test_serving_browser.py and by benchmarks/serve_screenshot.py (the README's screenshot).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} is not installed (make test installs Debian's chromium and chromium-driver as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def vitlab_serve(*args: str, timeout_s: float = 120.0, program: tuple[str, ...] = (sys.executable, "-m", "vitlab"),
                 env: dict | None = None, cwd=None, log: Path | None = None):
    """`vitlab serve ARGS --port 0` in a subprocess (`program` is the `vitlab` command; `env` its environment, by
    default this one's); yields (its base URL, its pid); stops it afterwards. With `log`, its stderr goes to that
    file (a pipe nobody reads would stall a server that logs much)."""
    env = dict(env if env is not None else os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    sink = subprocess.PIPE if log is None else open(log, "w")
    proc = subprocess.Popen([*program, "serve", *args, "--host", "127.0.0.1", "--port", "0"],
                            stderr=sink, text=True, env=env, cwd=cwd)
    if log is not None:
        sink.close()  # the child has its own copy
    lines = proc.stderr if log is None else open(log)
    try:
        deadline = time.monotonic() + timeout_s
        url = None
        while url is None:
            line = lines.readline()
            if not line and log is not None:
                time.sleep(0.05)
            if not line and proc.poll() is not None:
                raise RuntimeError(f"vitlab serve exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("vitlab serve did not start in time")
            match = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        wait_healthy(url, deadline)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lines.close()


def wait_healthy(url: str, deadline: float) -> None:
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def classify_in_page(driver, url: str, images: list[Path], timeout_s: float = 60.0) -> list[dict]:
    """Open the page, pick `images` in its file input, wait for every result; returns per image
    {"file", "state", "top1", "overlay_std", "heads"} (overlay_std: spread of the overlay's drawn pixels)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout_s)
    wait.until(lambda d: d.find_element(By.ID, "card").get_attribute("data-state") == "done")
    driver.find_element(By.ID, "file").send_keys("\n".join(str(Path(p).resolve()) for p in images))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == len(images) and all(
        r.get_attribute("data-state") in ("done", "error") for r in d.find_elements(By.CSS_SELECTOR, ".result")))
    wait.until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
    return driver.execute_script(PAGE_RESULTS)


# Reads each result box; draws its overlay <img> on a canvas to measure that real pixels were drawn.
PAGE_RESULTS = """
return [...document.querySelectorAll('.result')].reverse().map(box => {
  const img = box.querySelector('img.overlay');
  let std = null;
  if (img) {
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < px.length; i += 4) { const v = (px[i] + px[i + 1] + px[i + 2]) / 3; sum += v; sq += v * v; n++; }
    std = Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2));
  }
  return {file: box.querySelector('h2').textContent, state: box.dataset.state, top1: box.dataset.top1 || null,
          overlay_std: std, heads: box.querySelectorAll('img.head').length};
});
"""
