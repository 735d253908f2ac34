"""`vitlab serve`: the JSON API against `vitlab predict`, every bad input, batching under concurrency, faults."""

import asyncio
import base64
import io
import json
import socket
import struct
import threading
import time
import zlib

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")

from eval_fixtures import one_thread  # noqa: F401  (autouse)
from serving_support import (NAMES, assert_same_predictions, call, image_bytes, multipart, predict_raw, serving,
                             tiny_checkpoint)
from vitlab import load_pretrained
from vitlab.cli import main
from vitlab.evaluation.predict import predict_files
from vitlab.serving.app import Settings, create_app
from vitlab.serving.batching import Batcher
from vitlab.serving.engine import TorchEngine
from vitlab.serving.errors import RequestError
from vitlab.serving.images import ImageLimits


@pytest.fixture
def checkpoint(tmp_path):
    return tiny_checkpoint(tmp_path / "ckpt")


@pytest.fixture
def engine(checkpoint):
    return TorchEngine(checkpoint, device="cpu", precision="fp32")  # fp32: the same numbers as `predict`


def test_api_answers_what_predict_prints(engine, checkpoint, tmp_path, capsys):
    files = {"a.png": image_bytes(0), "b.jpg": image_bytes(1, fmt="JPEG"), "c.webp": image_bytes(2, fmt="WEBP"),
             "d.gif": image_bytes(3, fmt="GIF", mode="P"), "e.png": image_bytes(4, mode="RGBA"),
             "f.png": image_bytes(5, size=(300, 41), mode="L")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / n) for n in files]
    assert main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--precision", "fp32", "--json",
                 *paths]) == 0  # the engine's precision: auto would be bf16 on a CPU with AVX-512 BF16
    expected = json.loads(capsys.readouterr().out)["predictions"]
    with serving(create_app(engine)) as port:
        for (name, data), want in zip(files.items(), expected):
            status, _, got = predict_raw(port, data, f"?filename={name}")
            assert status == 200 and len(got) == 1
            assert_same_predictions(got[0]["predictions"], want["predictions"])
            assert got[0]["file"] == name
        body, headers = multipart(list(files.items()))  # several files in one request, answered in order
        status, _, got = call(port, "POST", "/v1/predict?top_k=3", body, headers)
        assert status == 200 and [g["file"] for g in got] == list(files)
        for g, want in zip(got, expected):
            assert_same_predictions(g["predictions"], want["predictions"][:3])
        status, _, health = call(port, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok" and health["batching"]["images"] == 2 * len(files)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height zeros: ~8,000 pixels per byte of file (deflate's limit is ~1,000:1)."""
    raw = zlib.compress(b"\x00" * ((-(-width // 8) + 1) * height), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_every_bad_input_is_a_4xx_with_a_message(engine):
    settings = Settings(max_body_bytes=200_000, images=ImageLimits(max_bytes=200_000, max_pixels=250_000))
    large = gradient_jpeg(600, 500)  # 300k pixels in ~10 kB: too large, but no bomb
    truncated = image_bytes(8, size=(64, 64))[:300]
    with serving(create_app(engine, settings)) as port:
        cases = [
            (predict_raw(port, b""), 400, "empty body"),
            (predict_raw(port, b"GIF89a but not really an image" * 3), 415, "not an image"),
            (predict_raw(port, b"x" * 200_001), 413, "more than the limit of 200,000 bytes"),
            (predict_raw(port, png_bomb(20_000, 20_000)), 413, "decompression bomb"),
            (predict_raw(port, large), 413, "more than the limit of 250,000"),
            (predict_raw(port, truncated), 415, "cannot decode"),
            (predict_raw(port, image_bytes(0), "?top_k=0"), 422, "top_k"),
            (predict_raw(port, image_bytes(0), "?rollout=gif"), 422, "rollout"),
            (call(port, "POST", "/v1/predict", *multipart([("a.png", b"")])), 400, "a.png: empty"),
            (call(port, "POST", "/v1/predict", b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=x"}),
             400, "multipart"),
            (call(port, "POST", "/v1/predict?rollout=png", *multipart([("a", image_bytes(0)), ("b", image_bytes(1))])),
             400, "one image"),
            (call(port, "GET", "/v1/model/training_curves.png"), 404, "no training curves"),
        ]
        chunked = chunked_upload(port, b"y" * 300_000, pieces=3)  # no Content-Length: cut off while reading
        cases.append((chunked, 413, "more than the limit"))
        for (status, headers, body), want_status, words in cases:
            assert status == want_status, (status, body)
            assert headers["content-type"].startswith("application/json") and words in body["error"], body
        assert call(port, "GET", "/healthz")[0] == 200  # none of it hurt the server
        assert predict_raw(port, image_bytes(0))[0] == 200


def gradient_jpeg(width: int, height: int) -> bytes:
    ramp = torch.linspace(0, 255, width).to(torch.uint8).expand(height, width)
    buffer = io.BytesIO()
    Image.fromarray(torch.stack([ramp, ramp.flip(1), ramp // 2], dim=-1).numpy()).save(buffer, "JPEG")
    return buffer.getvalue()


def chunked_upload(port: int, data: bytes, pieces: int):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        step = -(-len(data) // pieces)
        conn.request("POST", "/v1/predict", body=iter([data[i:i + step] for i in range(0, len(data), step)]),
                     headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(engine, checkpoint, tmp_path):
    images = [image_bytes(100 + i, size=(20 + i, 17)) for i in range(12)]
    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(data)
    single = predict_files(load_pretrained(checkpoint), [tmp_path / f"{i}.png" for i in range(len(images))])
    results = [None] * len(images)
    start = threading.Barrier(len(images))

    def client(i):
        start.wait()
        results[i] = predict_raw(port, images[i], f"?filename={i}.png")

    # a long window so that the concurrent requests surely meet in one batch
    with serving(create_app(engine, Settings(max_batch=8, window_ms=300, max_in_flight=len(images)))) as port:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = call(port, "GET", "/healthz")[2]["batching"]
    for i, (status, _, body) in enumerate(results):
        assert status == 200 and body[0]["file"] == f"{i}.png"
        assert_same_predictions(body[0]["predictions"], single[i]["predictions"])
    assert stats["images"] == len(images) and stats["largest_batch"] > 1 and stats["largest_batch"] <= 8


def test_rollout_overlay_and_head_maps(engine):
    with serving(create_app(engine)) as port:
        status, _, body = predict_raw(port, image_bytes(0, size=(60, 30)), "?rollout=base64")
        assert status == 200
        item = body[0]
        overlay = decode_data_url(item["rollout"])
        assert overlay.size == (240, 120)  # over the user's image, at its aspect ratio, enlarged 4x to >= 224
        status, _, body = predict_raw(port, image_bytes(0, size=(600, 300)), "?rollout=base64")
        assert decode_data_url(body[0]["rollout"]).size == (384, 192)  # a large one scaled down
        assert len(item["heads"]) == 2 and decode_data_url(item["heads"][0]).size == (96, 96)
        status, headers, png = predict_raw(port, image_bytes(0, size=(60, 30)), "?rollout=png")
        assert status == 200 and headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png)).size == (240, 120)
        assert json.loads(headers["x-top-label"]) == item["predictions"][0]["label"]


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))


def test_model_card_reads_the_training_run(tmp_path):
    run = tmp_path / "run"
    tiny_checkpoint(run / "checkpoints" / "step-00000010")
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.5, "lr": 0.001}\n')
    (run / "summary.json").write_text(json.dumps({"steps": 10, "last_metric": 0.5, "run_dir": str(run)}))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"top1": 0.5, "confusion_matrix": [[1, 0], [0, 1]]}))
    Image.new("RGB", (40, 20), "white").save(run / "training_curves.png")
    engine = TorchEngine(run, device="cpu", precision="fp32")
    with serving(create_app(engine)) as port:
        status, _, card = call(port, "GET", "/v1/model")
        assert status == 200 and card["labels"] == NAMES and card["parameters"] > 0
        assert card["architecture"]["width"] == 32 and card["preprocessing"]["normalisation"] == "minus_one_one"
        assert card["run"]["summary"]["last_metric"] == 0.5 and card["run"]["evaluation"] == {"top1": 0.5}
        status, headers, png = call(port, "GET", card["run"]["training_curves"])
        assert status == 200 and Image.open(io.BytesIO(png)).size == (40, 20)
        status, headers, html = call(port, "GET", "/")
        assert status == 200 and b"/v1/predict" in html and b"<script" in html


def test_bf16_fast_path_agrees_with_fp32(checkpoint):
    fp32 = TorchEngine(checkpoint, device="cpu", precision="fp32")
    fast = TorchEngine(checkpoint, device="cpu", precision="bf16")
    x = torch.stack([fp32.prepare(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)) for _ in range(4)])
    a, b = fp32.run(x, attention=True), fast.run(x, attention=True)
    assert torch.allclose(a.probabilities, b.probabilities, atol=0.03)
    assert torch.allclose(b.probabilities, fast.run(x).probabilities, atol=1e-3)  # with or without attention
    assert abs(a.rollout - b.rollout).max() < 0.05


def test_batcher_drops_abandoned_requests_and_survives_a_failing_batch():
    calls = []

    def run_batch(items):
        calls.append(list(items))
        if "boom" in items:
            raise RuntimeError("model failed")
        return [x * 2 for x in items]

    async def scenario():
        batcher = Batcher(run_batch, max_batch=4, window_ms=50)
        await batcher.start()
        try:
            abandoned = asyncio.ensure_future(batcher.submit(100))
            await asyncio.sleep(0)
            abandoned.cancel()  # the client went away while its request waited for the window
            assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]
            with pytest.raises(RuntimeError, match="model failed"):
                await batcher.submit("boom")
            assert await batcher.submit(5) == 10  # the collector goes on after a failed batch
            return batcher.stats
        finally:
            await batcher.stop()

    stats = asyncio.run(scenario())
    assert [0, 1, 2] in calls and all(100 not in c for c in calls)

    async def shutdown_with_work_queued():
        batcher = Batcher(run_batch, max_batch=4, window_ms=10_000)  # a window that never closes in time
        await batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        await batcher.stop()
        with pytest.raises(RequestError, match="shutting down"):
            await waiting

    asyncio.run(shutdown_with_work_queued())
    assert stats.dropped == 1 and stats.largest == 3


def test_batcher_refuses_when_its_queue_is_full():
    async def scenario():
        gate = threading.Event()
        batcher = Batcher(lambda items: gate.wait(10) and list(items), max_batch=1, window_ms=0, max_queue=1)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(1))  # taken by the worker, which blocks on the gate
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(batcher.submit(2))  # waits in the queue
            await asyncio.sleep(0.01)
            with pytest.raises(RequestError, match="busy"):
                await batcher.submit(3)
            gate.set()
            return await first, await second
        finally:
            gate.set()
            await batcher.stop()

    assert asyncio.run(scenario()) == (1, 2)


def test_a_vanishing_or_stalled_upload_does_not_stall_the_others(engine):
    settings = Settings(body_timeout_s=1.5)
    with serving(create_app(engine, settings)) as port:
        stalled = open_upload(port, declared=50_000, sent=b"\x89PNG" + b"\x00" * 1000)
        vanished = open_upload(port, declared=50_000, sent=b"\x89PNG" + b"\x00" * 1000)
        vanished.close()  # disconnects mid-upload
        started = time.monotonic()
        for i in range(10):
            status, _, _ = predict_raw(port, image_bytes(i), timeout=10)
            assert status == 200
        assert time.monotonic() - started < 10  # bounded: the others were served while the upload hung
        stalled.settimeout(10)
        answer = read_until_closed(stalled).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408") and "stalled" in answer  # the slow client is cut off
        status, _, health = call(port, "GET", "/healthz")
        assert status == 200 and health["batching"]["images"] == 10


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    with sock:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def open_upload(port: int, declared: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return sock


def test_serve_command_refuses_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitlab serve:") and "missing" in err and len(err.splitlines()) == 1


def test_serve_reports_through_the_command_lines_handler(tmp_path, capsys, monkeypatch):
    """The same path as every command: VITLAB_DEBUG=1 adds the traceback above the one line."""
    monkeypatch.setenv("VITLAB_DEBUG", "1")
    assert main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Traceback") and err[-1].startswith("vitlab serve: error:") and "missing" in err[-1]


@pytest.mark.parametrize("overrides", [dict(classifier="gap", reg_tokens=2), dict(attention="axial"),
                                       dict(distill_token=True)])
def test_attention_maps_of_other_vit_variants(tmp_path, overrides):
    engine = TorchEngine(tiny_checkpoint(tmp_path / "ckpt", **overrides), device="cpu", precision="fp32")
    out = engine.run(torch.stack([engine.prepare(torch.full((3, 16, 16), 9, dtype=torch.uint8))] * 2), attention=True)
    assert out.rollout.shape == (2, 2, 2) and out.heads.shape == (2, 2, 2, 2)
    assert out.probabilities.sum(1).tolist() == pytest.approx([1, 1])


def test_a_bit_resnet_is_served_without_attention(tmp_path):
    from vitlab import create_model, save_pretrained

    model = create_model("BiT-R50x1", layers=(1, 1, 1, 1), num_classes=3, image_size=32)
    engine = TorchEngine(save_pretrained(model, tmp_path / "bit"), device="cpu", precision="fp32")
    assert not engine.has_attention and engine.card()["name"].startswith("BiT ResNet, units (1, 1, 1, 1)")
    with serving(create_app(engine)) as port:
        status, _, body = predict_raw(port, image_bytes(0))
        assert status == 200 and len(body[0]["predictions"]) == 3
        status, _, body = predict_raw(port, image_bytes(0), "?rollout=base64")
        assert status == 400 and "cannot show attention" in body["error"]


def test_a_large_upload_is_decoded_small_and_answered_as_predict_answers(engine, checkpoint, tmp_path):
    """Decoded at a reduced scale (what the model needs, twice over): the answer is `predict`'s, nearly."""
    path = tmp_path / "large.png"
    smooth = Image.open(io.BytesIO(image_bytes(3, size=(9, 7)))).resize((1800, 1300), Image.BICUBIC)
    smooth.save(path)
    expected = predict_files(load_pretrained(checkpoint), [path])[0]["predictions"]
    with serving(create_app(engine)) as port:
        status, _, got = predict_raw(port, path.read_bytes())
    assert status == 200
    by_index = {p["index"]: p["probability"] for p in got[0]["predictions"]}
    assert got[0]["predictions"][0]["index"] == expected[0]["index"]
    assert [by_index[p["index"]] for p in expected] == pytest.approx([p["probability"] for p in expected], abs=0.01)


@pytest.mark.parametrize("option,value", [("--max-in-flight", "0"), ("--header-timeout", "-1"),
                                          ("--decode-threads", "0"), ("--max-request-pixels", "1000")])
def test_serve_command_refuses_a_bad_limit_in_one_line(checkpoint, capsys, option, value):
    try:  # argparse refuses most values itself (SystemExit), run() the ones that depend on each other
        code = main(["serve", "--checkpoint", str(checkpoint), option, value])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vitlab serve: error:") and option in err and len(err.splitlines()) == 1
