"""The README's screenshot of `vitlab serve`: a real checkpoint, Fashion-MNIST test images, headless Chromium.

    python benchmarks/serve_screenshot.py --checkpoint runs/fashion-mnist --out docs/figures/serve_page.png
    python benchmarks/serve_screenshot.py --smoke     # a tiny random model, one image: that it runs (the tests do this)

Starts `vitlab serve` on 127.0.0.1 at a free port, writes --count test images as PNG files, picks them in the
page's file input (as a person would), waits for every result and saves the window as a PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import chromium, classify_in_page, vitlab_serve  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the model to serve (required but with --smoke)")
    parser.add_argument("--out", default="docs/figures/serve_page.png")
    parser.add_argument("--indices", type=int, nargs="+", default=[0, 1], help="Fashion-MNIST test images")
    parser.add_argument("--size", type=int, nargs=2, default=[1280, 1400], help="window width and height")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny random model, one image, the screenshot in a temporary folder: that it runs")
    args = parser.parse_args()
    if not (args.checkpoint or args.smoke):
        parser.error("--checkpoint is required (or --smoke)")
    from vitlab.data import build_dataset

    dataset = build_dataset("fashion_mnist", "test", in_chans=1)
    with tempfile.TemporaryDirectory(prefix="vitlab-shot-") as tmp:
        if args.smoke:
            from serving_support import tiny_checkpoint

            args.checkpoint, args.indices = str(tiny_checkpoint(Path(tmp) / "tiny")), [0]
            args.out = str(Path(tmp) / "serve_page.png")
        files = []
        for i in reversed(args.indices):  # the page shows the newest result first
            image, label = dataset[i]
            name = dataset.class_names[label].lower().replace("/", "-").replace(" ", "-")
            files.append(Path(tmp) / f"test-{i}-{name}.png")
            Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(files[-1])
        with vitlab_serve("--checkpoint", args.checkpoint) as (url, _), chromium(*args.size) as driver:
            results = classify_in_page(driver, url, files)
            driver.save_screenshot(args.out)
    for r in results:
        print(f"{r['file']}: {r['state']}, top-1 {r['top1']}")
    print(f"wrote {args.out}")
    return 0 if all(r["state"] == "done" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
