"""`vitlab serve`: a web page and a JSON API in front of a checkpoint (needs `pip install 'vitlab[serve]'`)."""

from __future__ import annotations

import contextlib
import socket
import sys

from . import common

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DAY_S = 86_400  # the longest timeout taken


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
    limits = parser.add_argument_group("limits (what one client may take from the others)")
    limits.add_argument("--max-body-mb", type=common.number(0, above=True), default=25.0,
                        help="largest request body (MiB)")
    limits.add_argument("--max-images", type=common.integer(1), default=16, help="most images in one request")
    limits.add_argument("--max-pixels", type=common.integer(1), default=40_000_000,
                        help="largest image (width x height)")
    limits.add_argument("--max-request-pixels", type=common.integer(1), default=100_000_000,
                        help="most pixels in one request, its images together")
    limits.add_argument("--decode-threads", type=common.integer(1, 256), default=2,
                        help="images decoded at once, all requests together (each holds up to 4 bytes per pixel)")
    limits.add_argument("--max-in-flight", type=common.integer(1), default=8,
                        help="predictions read, decoded or run at once; more are answered 503 (default 8)")
    limits.add_argument("--max-connections", type=common.integer(1), default=1000,
                        help="open connections; past it the longest-idle one is closed (lowered to fit the "
                             "open-file limit)")
    limits.add_argument("--header-timeout", type=common.number(0, DAY_S, above=True), default=10.0,
                        help="seconds a request's header may take (408 after)")
    limits.add_argument("--body-timeout", type=common.number(0, DAY_S, above=True), default=30.0,
                        help="seconds an upload may send nothing (408 after)")
    limits.add_argument("--idle-timeout", type=common.integer(1, DAY_S), default=5,
                        help="seconds a keep-alive connection may wait for its next request")


SPARE_FILES = 256  # descriptors kept free for the model, logs and the connections accepted in one go
BACKLOG = 128  # connections the kernel queues for accept (and asyncio accepts at once)


def settings_from(args):
    from ..serving.app import Settings
    from ..serving.images import ImageLimits

    body = int(args.max_body_mb * 2**20)
    images = ImageLimits(max_bytes=body, max_pixels=args.max_pixels, max_request_pixels=args.max_request_pixels)
    return Settings(max_body_bytes=body, images=images, max_images=args.max_images, max_batch=args.max_batch,
                    window_ms=args.window_ms, body_timeout_s=args.body_timeout, max_in_flight=args.max_in_flight,
                    decode_threads=args.decode_threads)


def connection_limit(wanted: int) -> int:
    """--max-connections, lowered to what the open-file limit allows (its soft limit raised to the hard one)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - SPARE_FILES)


def uvicorn_config(app, args, max_connections: int):
    import uvicorn

    from ..serving.connections import guarded_protocol

    protocol = guarded_protocol(max_connections, args.header_timeout)
    return uvicorn.Config(app, log_level="warning", http=protocol, timeout_keep_alive=args.idle_timeout,
                          backlog=BACKLOG)


def run(args) -> int:
    try:
        import uvicorn

        from ..serving.app import create_app
        from ..serving.engine import OnnxEngine, TorchEngine
    except ImportError as e:
        raise common.UsageError(f"{e.name or e} is not installed; install the serving extras: "
                                "pip install 'vitlab[serve]'") from None
    if args.max_request_pixels < args.max_pixels:
        raise common.UsageError(f"--max-request-pixels ({args.max_request_pixels:,}) must be >= --max-pixels ({args.max_pixels:,})")
    max_connections = connection_limit(args.max_connections)
    if max_connections < 1:
        raise common.UsageError(f"the open-file limit leaves no room for connections; raise it (ulimit -n) above {SPARE_FILES}")
    if args.onnx:  # without onnxruntime: one line saying how to install it (vitlab.checkpoints.onnx)
        engine = OnnxEngine(args.onnx)
    else:
        engine = TorchEngine(args.checkpoint, device=args.device, precision=args.precision, image_size=args.image_size)
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as e:
        raise common.UsageError(f"--host {args.host} --port {args.port}: cannot listen there "
                                f"({e.strerror or e})") from None
    server = uvicorn.Server(uvicorn_config(create_app(engine, settings_from(args)), args, max_connections))
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
