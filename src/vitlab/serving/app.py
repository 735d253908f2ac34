"""The web app: the page, the JSON API, and the limits that keep a bad request from hurting the others.

    POST /v1/predict   an image (multipart field(s) or the raw body) -> [{"file", "predictions": [...]}]
                       as `vitlab predict --json` prints; ?top_k=5; ?rollout=base64 adds the attention
                       pictures as data URLs; ?rollout=png answers the rollout overlay of one image as a PNG
    GET  /v1/model     the model card
    GET  /healthz      {"status": "ok", ...batching statistics}
    GET  /             the page
Every error is {"error": message} with a 4xx (5xx only for the server's own failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..evaluation.predict import top_predictions
from .batching import Batcher
from .card import curves_path
from .engine import Engine, TorchEngine
from .errors import RequestError
from .images import ImageLimits, check_request_pixels, decode_upload, open_upload
from .limits import BodyLimit, InFlightLimit
from .overlays import DISPLAY_SIDE, data_url, display_copy, head_maps, rollout_overlay
from .page import page_html


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 25 * 2**20  # a whole request, multipart overhead included
    images: ImageLimits = field(default_factory=ImageLimits)
    max_images: int = 16  # files in one request
    max_batch: int = 32
    window_ms: float = 5.0
    body_timeout_s: float = 30.0  # a client that sends nothing for this long is answered 408
    max_in_flight: int = 8  # predictions being read, decoded or run at once; more are answered 503
    decode_threads: int = 2  # images decoded at once, all requests together (each up to images.max_pixels)


@dataclass
class _Job:
    """One image on its way through the batcher."""

    pixels: torch.Tensor  # the model's input (C, h, w)
    attention: bool


def create_app(engine: Engine, settings: Settings = Settings()) -> FastAPI:
    batcher = Batcher(lambda jobs: run_jobs(engine, jobs), max_batch=settings.max_batch,
                      window_ms=settings.window_ms)
    # its own few threads, not the shared pool: each thread's allocator keeps the memory of the largest image
    # it decoded, so the number of threads bounds the memory that decoding holds
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="vitlab-decode")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().set_exception_handler(log_one_line)
        await batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="vitlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(InFlightLimit, max_in_flight=settings.max_in_flight)  # the outer one: refuses first
    app.state.batcher, app.state.engine = batcher, engine
    card = engine.card()
    add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(page_html())

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "batching": batcher.stats.as_dict()}

    @app.get("/v1/model")
    async def model_card():
        return card

    @app.get("/v1/model/training_curves.png")
    async def training_curves():
        path = curves_path(engine.checkpoint) if isinstance(engine, TorchEngine) else None
        if path is None:
            raise RequestError(404, "this checkpoint has no training curves (not inside a vitlab train run)")
        return FileResponse(path, media_type="image/png")

    @app.post("/v1/predict")
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000),
                      rollout: Literal["none", "base64", "png"] = "none"):
        uploads = await read_uploads(request, settings.max_images)
        if rollout == "png" and len(uploads) != 1:
            raise RequestError(400, f"rollout=png answers one image; this request has {len(uploads)}")
        want_attention = rollout != "none"
        if want_attention and not engine.has_attention:
            raise RequestError(400, "this model cannot show attention (a ResNet, or an ONNX export, which has "
                                    "logits only); ask without rollout")

        opened = await run_in_threadpool(lambda: [open_upload(data, name, settings.images) for name, data in uploads])
        check_request_pixels(opened, settings.images)
        loop = asyncio.get_running_loop()
        pixels, images = [], []
        for (name, _), img in zip(uploads, opened):  # one at a time: a request holds one decoded image at most
            x, display = await loop.run_in_executor(decoder, prepare_upload, engine, img, name, want_attention)
            pixels.append(x)
            images.append(display)
        outputs = await asyncio.gather(*(batcher.submit(_Job(x, want_attention)) for x in pixels))
        if rollout == "png":
            png = await run_in_threadpool(rollout_overlay, images[0], outputs[0]["rollout"])
            best = top_predictions(outputs[0]["probabilities"][None], engine.labels, 1)[0][0]
            return Response(png, media_type="image/png", headers={"X-Top-Label": json.dumps(best["label"]),
                                                                   "X-Top-Probability": f"{best['probability']:.6f}"})
        return await run_in_threadpool(
            lambda: [result_item(engine, name, image, out, top_k, want_attention)
                     for (name, _), image, out in zip(uploads, images, outputs)])

    return app


def add_error_handlers(app: FastAPI) -> None:
    """A refused request is one JSON error with its status, never a traceback."""
    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        # a body cut off mid-read leaves the connection unusable: say so, and the server closes it at once
        return error_response(e.status, e.message, close=e.status in (408, 413))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors())
        return error_response(422, problems)


def prepare_upload(engine: Engine, img, name: str, attention: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's input and, for the attention pictures, the image at display size: decoded no larger than
    they need (no full-size copy outlives the call)."""
    side = engine.preprocessing.decode_side()
    image = decode_upload(img, name, engine.in_chans, max(side, DISPLAY_SIDE) if attention else side)
    return engine.prepare(image), display_copy(image) if attention else None


def log_one_line(loop, context: dict) -> None:
    """asyncio's own errors (e.g. out of file descriptors) as one log line each, not a traceback each."""
    error = context.get("exception")
    detail = f": {type(error).__name__}: {error}" if error is not None else ""
    logging.getLogger("uvicorn.error").error("%s%s", context.get("message", "asyncio error"), detail)


def run_jobs(engine: Engine, jobs: list[_Job]) -> list[dict]:
    """The batcher's worker: one forward pass for all jobs; attention computed if any job asked for it."""
    out = engine.run(torch.stack([j.pixels for j in jobs]), attention=any(j.attention for j in jobs))
    return [{"probabilities": out.probabilities[i],
             "rollout": None if out.rollout is None else out.rollout[i],
             "heads": None if out.heads is None else out.heads[i]} for i in range(len(jobs))]


def result_item(engine: Engine, name: str, image: torch.Tensor, out: dict, top_k: int, attention: bool) -> dict:
    item = {"file": name, "predictions": top_predictions(out["probabilities"][None], engine.labels, top_k)[0]}
    if attention:
        item["rollout"] = data_url(rollout_overlay(image, out["rollout"]))
        item["heads"] = [data_url(png) for png in head_maps(out["heads"])]
    return item


async def read_uploads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each multipart file, or of the raw body (named by ?filename=, else 'body')."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=max_images, max_fields=max_images + 8)
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise RequestError(400, "the form has no file: send the image as a multipart file field "
                                        "(e.g. curl -F file=@cat.jpg)")
            uploads = [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]
            await form.close()
            return uploads
        return [(request.query_params.get("filename", "body"), await request.body())]
    except MultiPartException as e:
        raise RequestError(400, f"malformed multipart form: {e.message}") from None
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before the upload finished") from None


def error_response(status: int, message: str, close: bool = False) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"} if close else None)
