"""The docs' screenshot of TensorBoard with a study's arms overlaid: a real `tensorboard` on the study's log dir,
headless Chromium.

    vitlab study pooling --quick --log tensorboard --out runs/study-pooling-quick
    python benchmarks/tensorboard_screenshot.py --logdir runs/study-pooling-quick/tensorboard \
        --out docs/figures/tensorboard_study.png
    python benchmarks/tensorboard_screenshot.py --smoke   # two runs of a few made-up losses: that it runs (the tests)

Starts `tensorboard` on 127.0.0.1 at a free port, opens its Time Series dashboard, keeps the scalar cards whose
tag matches --tag, shows the values as logged (no smoothing, no outliers clipped, no data table) with the first
card at full width, and saves the window as a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import chromium  # noqa: E402


@contextlib.contextmanager
def tensorboard(logdir: str, timeout_s: float = 120.0):
    """`tensorboard --logdir LOGDIR` on 127.0.0.1 at a free port; yields its URL once it lists the runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url + "data/runs", timeout=5) as r:
                    if json.loads(r.read()):
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not start on {logdir}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def click(wait, by: str, selector: str) -> None:
    """Clicks the first matching element that takes the click, retrying until one does: TensorBoard's cards
    re-render as the filters change, so a button found a moment earlier may not be interactable yet."""
    from selenium.common.exceptions import ElementNotInteractableException

    def clicked(driver) -> bool:
        for element in driver.find_elements(by, selector):
            with contextlib.suppress(ElementNotInteractableException):
                element.click()
                return True
        return False

    wait.until(clicked)


def screenshot(url: str, tag: str, out: str, size: tuple[int, int]) -> None:
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium(*size) as driver:
        driver.get(url + "#timeseries")
        wait = WebDriverWait(driver, 60, ignored_exceptions=(ElementClickInterceptedException,
                                                             StaleElementReferenceException))
        click(wait, By.XPATH, "//button[normalize-space()='Scalars']")
        smoothing = next(i for i in driver.find_elements(By.CSS_SELECTOR, "input.mdc-slider__input")
                         if i.get_attribute("value") == "0.6")  # the default smoothing
        driver.execute_script("arguments[0].focus()", smoothing)
        smoothing.send_keys(Keys.HOME)  # 0: the values as logged
        for setting in ("Ignore outliers", "Enable step selection"):  # all of each line; the runs' colours at left
            click(wait, By.XPATH, f"//*[contains(text(), '{setting}')]/ancestor::mat-checkbox//input")
        click(wait, By.CSS_SELECTOR, "button[aria-label='Close side pane']")
        driver.find_element(By.CSS_SELECTOR, "input[placeholder='Filter tags (regex)']").send_keys(tag, Keys.ESCAPE)
        click(wait, By.TAG_NAME, "body")
        click(wait, By.CSS_SELECTOR, "button[aria-label='Toggle full size mode']")
        time.sleep(3)  # the chart's transition
        driver.save_screenshot(out)


def made_up_runs(logdir: Path) -> str:
    """Two runs of three steps of a falling "loss", written as vitlab's tracker writes them."""
    from torch.utils.tensorboard import SummaryWriter

    for run, scale in (("arm-a", 1.0), ("arm-b", 2.0)):
        with SummaryWriter(str(logdir / run)) as writer:
            for step in range(3):
                writer.add_scalar("loss", scale / (step + 1), step)
    return str(logdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", help="a study's log dir: OUT/tensorboard (required but with --smoke)")
    parser.add_argument("--out", default="docs/figures/tensorboard_study.png")
    parser.add_argument("--tag", default="^loss$", help="a regex of the scalar tags to show")
    parser.add_argument("--size", type=int, nargs=2, default=[1400, 810], help="window width and height")
    parser.add_argument("--smoke", action="store_true",
                        help="two made-up runs, the screenshot in a temporary folder: that it runs")
    args = parser.parse_args()
    if not (args.logdir or args.smoke):
        parser.error("--logdir is required (or --smoke)")
    with tempfile.TemporaryDirectory(prefix="vitlab-tensorboard-") as tmp:
        if args.smoke:
            args.logdir, args.out = made_up_runs(Path(tmp) / "tensorboard"), str(Path(tmp) / "tensorboard.png")
        with tensorboard(args.logdir) as url:
            screenshot(url, args.tag, args.out, tuple(args.size))
        written = Path(args.out).is_file()
    print(f"wrote {args.out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
