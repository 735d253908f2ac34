"""A bounded load test of `vitlab serve` on 127.0.0.1: latency, images/s and memory, with and without batching.

    python benchmarks/serve_load.py --checkpoint runs/fashion-mnist --requests 2000 --clients 32
    python benchmarks/serve_load.py --smoke     # seconds: a tiny random model, a few requests (the tests do this)

For each --max-batch value (default: 32, then 1 = no batching) it starts `vitlab serve` on 127.0.0.1 at a free
port, sends a few warm-up requests, reads the server's RSS, then has --clients threads (each with its own
keep-alive connection) POST distinct Fashion-MNIST test images as raw PNG bytes until --requests answers
have come back or --max-seconds have passed, and reads the RSS again; --rounds repeats that load against the
same server (latency and images/s are the first round's; errors count every round) to show whether the
memory settles or keeps growing. Then it stops the server. Nothing but 127.0.0.1
is contacted. The client runs on the same machine and takes CPU from the server: images/s is a floor.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import vitlab_serve  # noqa: E402


def test_images(count: int) -> list[bytes]:
    """The first `count` Fashion-MNIST test images as PNG bytes (random 28x28 images if the data is missing)."""
    try:
        from vitlab.data import build_dataset

        dataset = build_dataset("fashion_mnist", "test", in_chans=1)
        arrays = [dataset[i][0][0].numpy() for i in range(count)]
    except Exception as e:  # noqa: BLE001 - a benchmark still runs without the data set
        print(f"(Fashion-MNIST not readable: {e}; using random images)", file=sys.stderr)
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(count)]
    out = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batching_stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())["batching"]
    finally:
        conn.close()


def load(port: int, images: list[bytes], requests: int, clients: int, max_seconds: float) -> dict:
    latencies, errors, lock = [], [], threading.Lock()
    issued = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    n = next(issued, None)
                if n is None:
                    return
                started = time.perf_counter()
                try:
                    conn.request("POST", "/v1/predict?top_k=5", body=images[n % len(images)],
                                 headers={"Content-Type": "image/png"})
                    response = conn.getresponse()
                    body = response.read()
                    ok = response.status == 200 and json.loads(body)[0]["predictions"]
                except (OSError, http.client.HTTPException, ValueError) as e:
                    ok, body = False, repr(e).encode()
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    (latencies if ok else errors).append(time.perf_counter() - started if ok else body[:200])
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"answered": len(latencies), "errors": len(errors), "first_errors": [e.decode(errors="replace")
                                                                               for e in errors[:3]],
            "wall_s": round(wall, 2), "images_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the model to serve (required but with --smoke)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=300, help="stop each run after this long")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--rounds", type=int, default=2,
                        help="load rounds against the same server; RSS after each shows whether memory grows")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 16 requests from 2 clients, "
                        "batches of up to 4, one round: that it runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitlab-serve-load-") as tmp:
        if args.smoke:
            from serving_support import tiny_checkpoint

            args.checkpoint, args.requests, args.clients, args.max_batch, args.rounds = \
                str(tiny_checkpoint(Path(tmp) / "tiny")), 16, 2, [4], 1
        elif not args.checkpoint:
            parser.error("--checkpoint is required (or --smoke)")
        rows = measure(args, warmup=4 if args.smoke else 64)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| max batch | answered | errors | p50 ms | p99 ms | images/s | mean batch | RSS MiB: before -> after each round |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['max_batch']} | {r['answered']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['images_per_s']} | {r['mean_batch']} | {r['rss_before_mib']} -> {' -> '.join(map(str, r['rss_after_mib']))} |")
    return 0 if all(r["errors"] == 0 and r["answered"] > 0 for r in rows) else 1


def measure(args, warmup: int) -> list[dict]:
    """One row per --max-batch value: a fresh server, warm-up requests, then the rounds of load."""
    images = test_images(256)
    rows = []
    for max_batch in args.max_batch:
        serve_args = ["--checkpoint", args.checkpoint, "--max-batch", str(max_batch), "--window-ms",
                      str(args.window_ms), "--precision", args.precision]
        with vitlab_serve(*serve_args) as (url, pid):
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            load(port, images, warmup, 8, 60)  # warm-up: first-call allocations and oneDNN kernel selection
            before, counted = rss_mib(pid), batching_stats(port)
            result = load(port, images, args.requests, args.clients, args.max_seconds)
            after, stats = [rss_mib(pid)], batching_stats(port)
            for _ in range(args.rounds - 1):  # the same load again: its RSS should stay where the first left it
                again = load(port, images, args.requests, args.clients, args.max_seconds)
                result["errors"] += again["errors"]
                after.append(rss_mib(pid))
        batches, batched = stats["batches"] - counted["batches"], stats["images"] - counted["images"]
        row = {"max_batch": max_batch, "window_ms": args.window_ms, "clients": args.clients, **result,
               "rss_before_mib": round(before, 1), "rss_after_mib": [round(a, 1) for a in after],
               "mean_batch": round(batched / max(batches, 1), 2), "largest_batch": stats["largest_batch"],
               "load_average": os.getloadavg()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
