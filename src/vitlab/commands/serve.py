"""`vitlab serve`: a web page and a JSON API in front of a checkpoint (needs `pip install 'vitlab[serve]'`)."""

from __future__ import annotations

import socket
import sys

from . import common

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    common.add_checkpoint_args(parser, required=False, group=source)
    source.add_argument("--onnx", type=common.non_empty,
                        help="an ONNX file written by `vitlab convert C out.onnx --to onnx` "
                             "(labels and preprocessing from its .json sidecar)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=common.port, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: any free)")
    common.add_runtime_args(parser, precision="auto",
                            precision_help="fp32, bf16, fp16 (weights cast once) or auto: the fast path, bf16 on a "
                                           "CPU with oneDNN bf16 kernels or a GPU that has it, else fp32")
    parser.add_argument("--image-size", type=common.image_size, default=None,
                        help="input resolution (default: the checkpoint's)")
    parser.add_argument("--max-batch", type=common.integer(1), default=32, help="largest batch of concurrent requests")
    parser.add_argument("--window-ms", type=common.number(0, 60_000), default=5.0,
                        help="how long the first request of a batch waits for others (ms)")
    parser.add_argument("--max-body-mb", type=common.number(0, above=True), default=25.0,
                        help="largest request body (MiB)")
    parser.add_argument("--max-pixels", type=common.integer(1), default=40_000_000,
                        help="largest image (width x height)")
    parser.add_argument("--max-images", type=common.integer(1), default=16, help="most images in one request")


def settings_from(args):
    from ..serving.app import Settings
    from ..serving.images import ImageLimits

    body = int(args.max_body_mb * 2**20)
    return Settings(max_body_bytes=body, images=ImageLimits(max_bytes=body, max_pixels=args.max_pixels),
                    max_images=args.max_images, max_batch=args.max_batch, window_ms=args.window_ms)


def fail(message: str) -> int:
    print(f"vitlab serve: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    try:
        import uvicorn

        from ..serving.app import create_app
        from ..serving.engine import OnnxEngine, TorchEngine
    except ImportError as e:
        return fail(f"{e.name or e} is not installed; install the serving extras: pip install 'vitlab[serve]'")
    try:
        if args.onnx:
            engine = OnnxEngine(args.onnx)
        else:
            engine = TorchEngine(args.checkpoint, device=args.device, precision=args.precision,
                                 image_size=args.image_size)
    except ImportError as e:
        return fail(f"{e.name or e} is not installed; install the ONNX extras: pip install 'vitlab[onnx]'")
    except (OSError, ValueError) as e:  # missing file, not a checkpoint, not a ViT, a bad --device (ValueErrors)
        return fail(str(e))
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as e:
        return fail(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})")
    app = create_app(engine, settings_from(args))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    print(f"vitlab serve: {engine.card()['name']} ({engine.device}, {engine.precision}) on {url}  (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before uvicorn starts, so --port 0 can print the port the system chose."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
