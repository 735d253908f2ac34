"""The page of `vitlab serve`, driven in a real browser (headless Chromium via Selenium).

Skipped only where Debian's chromium / chromium-driver are not installed (make test installs them as root).
"""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from browser_support import browser_missing, chromium, classify_in_page, vitlab_serve
from serving_support import tiny_checkpoint
from vitlab.cli import main

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


def test_page_shows_predict_top1_overlay_and_heads(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(64, 48), (40, 40)]):
        images.append(tmp_path / f"picture-{i}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images[-1])
    assert main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--json", *map(str, images)]) == 0
    expected = [r["predictions"][0]["label"] for r in json.loads(capsys.readouterr().out)["predictions"]]
    with vitlab_serve("--checkpoint", str(checkpoint), "--precision", "fp32", "--device", "cpu") as (url, _):
        with chromium() as driver:
            results = classify_in_page(driver, url, images)
            driver.save_screenshot(str(tmp_path / "page.png"))
    assert [r["file"] for r in results] == [p.name for p in images]
    for result, top1 in zip(results, expected):
        assert result["state"] == "done" and result["top1"] == top1
        assert result["overlay_std"] > 5  # the overlay was drawn: not blank, not one flat colour
        assert result["heads"] == 2
    shot = Image.open(tmp_path / "page.png")
    assert shot.size[0] >= 1000 and np.asarray(shot.convert("L")).std() > 5
