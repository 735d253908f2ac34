"""The throughput harness: step functions, interleaved timing, peak memory, the device's peak FLOP/s, and
images/s with the largest batch that fits against input size (the paper's Figure 12).

Shared by `vitlab bench` (vitlab alone), benchmarks/throughput.py (vitlab beside its peers) and the throughput
study. Timings are interleaved across contenders (A B C A B C ...) after a warm-up, and reported as medians over
rounds, so that drift in a shared machine's load falls on every contender alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .models import count_flops, create_model
from .models.fast import compile_model, cuda_graph_inference, fast_inference
from .runtime import autocast, pick_device
from .training.losses import classification_loss
from .training.optim import make_adamw
from .training.step import clip_gradients, forward_backward

# Dense bf16 tensor-core peaks from the datasheets (FLOP/s, without sparsity), matched against the device name
# in this order (the PCIe and NVL cards before the SXM ones whose names they contain).
DATASHEET_BF16_PEAK = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12,
                       "L4": 121e12, "RTX 4090": 165e12}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- steps ------------------------------------------------------------------------------------------
def inference_step(model: Callable, x: torch.Tensor, precision: str, logits: Callable = lambda out: out):
    """One forward pass without autograd, under autocast for `precision`."""
    def step():
        with torch.inference_mode(), autocast(x.device, precision):
            return logits(model(x))
    return step


def training_step(model: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  precision: str, logits: Callable = lambda out: out, *, label_smoothing: float = 0.0,
                  clip_grad_norm: float | None = None):
    """Forward, cross-entropy, backward, (clipping,) optimiser step: the Trainer's step on one batch."""
    def objective(images, targets):  # the classification objective's loss
        return classification_loss(logits(model(images)), targets, label_smoothing=label_smoothing)

    def step():
        loss, _ = forward_backward(objective, x, y, precision)
        if clip_grad_norm is not None:
            clip_gradients(optimizer_parameters(optimizer), clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def random_batch(batch_size: int, image_size: int, num_classes: int, device, in_chans: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_chans, image_size, image_size, generator=g)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), generator=g)
    return x.to(device), y.to(device)


@dataclass
class Variant:
    """How to run one contender: which task and precision, and which fast paths."""

    task: str = "inference"  # "inference" | "train"
    precision: str = "fp32"  # "fp32" | "bf16"
    compile: bool = False
    fast: bool = False  # inference: fast_inference (weights cast once; packed oneDNN matmuls on CPU)
    cuda_graph: bool = False  # inference on CUDA: replay one recorded graph
    grad_checkpointing: bool = False
    compile_mode: str | None = None


def vitlab_step(model: nn.Module, variant: Variant, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-4):
    """The step function for vitlab `model` run as `variant` says, using vitlab's fast paths."""
    if variant.task == "train":
        model.train().set_grad_checkpointing(variant.grad_checkpointing)
        optimizer = make_adamw(model, lr=lr, weight_decay=0.1)
        run = compile_model(model, mode=variant.compile_mode) if variant.compile else model
        return training_step(run, optimizer, x, y, variant.precision)
    model.eval()
    if variant.cuda_graph:
        return inference_step(cuda_graph_inference(model, x, variant.precision), x, "fp32")
    run = fast_inference(model, variant.precision) if variant.fast else model
    if variant.compile:
        run = compile_model(run, inference=True, mode=variant.compile_mode)
    return inference_step(run, x, "fp32" if variant.fast else variant.precision)


# ---- timing -----------------------------------------------------------------------------------------
def time_call(fn: Callable, device: torch.device, repeats: int = 1) -> float:
    """Seconds per call of fn, averaged over `repeats` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def interleave(fns: dict[str, Callable], device: torch.device, rounds: int = 3, warmup: int = 1,
               repeats: int = 1, on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Time every fn once per round, in turn (A B C A B C ...), after `warmup` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            t = time_call(fn, device, repeats)
            if r >= warmup:
                times[name].append(t)
        if on_round:
            on_round(r)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---- the device's peak ------------------------------------------------------------------------------
def matmul_step(dtype: torch.dtype, device: torch.device, n: int = 2048) -> tuple[Callable, int]:
    """An n x n x n matmul in `dtype` and its FLOPs: the CPU's practical peak, measured beside the models."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return (lambda: torch.mm(a, b)), 2 * n**3


def datasheet_peak(device: torch.device) -> tuple[str, float] | None:
    """(GPU name, dense bf16 FLOP/s) from the datasheet table, or None when the GPU is not listed."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in DATASHEET_BF16_PEAK.items():
        if key in name:
            return name, peak
    return None


def model_flops(model_or_config, image_size: int, task: str) -> int:
    """Model FLOPs per image: one forward for inference, 3x (forward + backward) for a training step."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return count_flops(cfg, image_size) * (3 if task == "train" else 1)


# ---- peak memory ------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssSampler(threading.Thread):
    """Highest resident set size seen, sampled every `interval` s while the step runs (torch drops the GIL)."""

    def __init__(self, interval: float = 0.001):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, _rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)


def peak_step_memory(fn: Callable, device: torch.device) -> int | None:
    """Bytes a step adds at its peak over what was allocated before it.

    CUDA: torch's allocator statistics. CPU (Linux): the resident set sampled during the step, less the
    resident set before it (after returning freed heap to the OS); None where /proc is not available.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not os.path.exists("/proc/self/statm"):
        return None
    _malloc_trim()
    before = _rss_bytes()
    sampler = _RssSampler()
    sampler.start()
    try:
        fn()
    finally:
        sampler.done.set()
        sampler.join()
    return max(sampler.peak, _rss_bytes()) - before


@dataclass
class Result:
    """One contender's timings on one workload, and what follows from them."""

    name: str
    batch_size: int
    flops_per_image: int
    times: list[float] = field(default_factory=list)
    peak_memory: int | None = None

    @property
    def seconds(self) -> float:
        return median(self.times)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.seconds

    @property
    def flops_per_second(self) -> float:
        return self.flops_per_image * self.images_per_second


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# ---- images/s and the largest batch against input size (Figure 12) --------------------------------------------
PROBE_BATCHES = (4, 32, 256, 2048)
MIN_GROWTH = 32 * 2**20  # the CPU's page-level peak needs a large difference to be read reliably


def images_per_second(step: Callable, batch: int, device: torch.device, *, seconds: float = 2.0, warmup: int = 2,
                      most: int = 50) -> float:
    """Images/s of `step` on `batch` images: the median of timed calls after `warmup` untimed ones, timed until
    `seconds` have passed (at least 3 calls, at most `most`)."""
    times: list[float] = []
    for i in range(warmup + most):
        elapsed = time_call(step, device)
        if i >= warmup:
            times.append(elapsed)
            if sum(times) > seconds and len(times) >= 3:
                break
    return batch / median(times)


def activation_memory(model, image_size: int, in_chans: int, device: torch.device, precision: str,
                      build: dict) -> tuple[float, float]:
    """(bytes per image, fixed bytes) that one forward pass adds to the memory in use, weights excluded.

    On a GPU: the allocator's peak statistics (peak_step_memory) at batch 4 and 32. On the CPU: the peak
    resident memory of a fresh child process (spawned: a forked child of a process that has run OpenMP work can
    hang) at batch 4 and then larger batches until the peak has grown by MIN_GROWTH, so that allocator slack
    does not hide it.
    """
    if device.type == "cuda":
        peaks = [(b, peak_step_memory(inference_step(model, random_batch(b, image_size, 1, device, in_chans)[0],
                                                     precision), device)) for b in PROBE_BATCHES[:2]]
    else:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            peaks = pool.apply(_fresh_process_peaks, (build, image_size, in_chans, precision))
    (b0, p0), (b1, p1) = peaks[0], peaks[-1]
    per_image = max((p1 - p0) / (b1 - b0), 1.0)
    return per_image, max(p0 - b0 * per_image, 0.0)


def _fresh_process_peaks(build: dict, image_size: int, in_chans: int, precision: str) -> list[tuple[int, int]]:
    """(batch, peak resident bytes over the model's) for increasing batches, in a process of its own."""
    model = create_model(**build).eval()
    base, peaks = _rss_bytes(), []
    for batch in PROBE_BATCHES:  # increasing, so each high-water mark is this batch's own
        inference_step(model, random_batch(batch, image_size, 1, "cpu", in_chans)[0], precision)()
        peaks.append((batch, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base))
        if len(peaks) > 1 and peaks[-1][1] - peaks[0][1] >= MIN_GROWTH:
            break
    return peaks


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's CPU threads set to `threads` meanwhile (None: left as they are)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def size_point(*, model: str, overrides: dict | None = None, image_size: int, in_chans: int = 3, batch: int = 8,
               memory_cap_gb: float = 4.0, precision: str = "bf16", seconds: float = 2.0, device: str | None = None,
               max_batch: bool = True, threads: int | None = None) -> dict:
    """One point of Figure 12: inference images/s at `batch`, and (max_batch) the largest batch whose weights and
    activations fit `memory_cap_gb`, which follows from two measured points as memory grows linearly in the
    batch. `threads`: torch's CPU threads meanwhile (the paper reports speed per core: threads=1)."""
    with torch_threads(threads):
        dev = pick_device(device)
        build = dict(name=model, image_size=image_size, in_chans=in_chans, **(overrides or {}))
        net = create_model(**build).eval().to(dev)
        weights = sum(p.numel() * p.element_size() for p in net.parameters())
        step = inference_step(net, random_batch(batch, image_size, 1, dev, in_chans)[0], precision)
        row = {"image_size": image_size, "batch": batch,
               "images_per_s": images_per_second(step, batch, dev, seconds=seconds),
               "weights_mb": weights / 2**20, "precision": precision, "device": dev.type,
               "threads": torch.get_num_threads(), "gflops_per_image": count_flops(net.config, image_size) / 1e9}
        if not max_batch:
            return row
        per_image, fixed = activation_memory(net, image_size, in_chans, dev, precision, build)
    largest = max(0, int((memory_cap_gb * 2**30 - weights - fixed) // per_image))
    return {**row, "mb_per_image": per_image / 2**20, "fixed_mb": fixed / 2**20, "max_batch": largest,
            "memory_cap_gb": memory_cap_gb}
