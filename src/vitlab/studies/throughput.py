"""Inference throughput and the largest batch that fits a memory cap, against input size (Figure 12).

Images/s: the median of timed batches after warm-up, in inference mode. Memory: the peak that one forward pass
adds at batch 4 and at batch 32 (on a GPU torch's allocator statistics; on the CPU the peak resident memory of a
fresh process); it grows linearly in the batch, so the largest batch whose weights + activations fit
`memory_cap_gb` follows from the two points.
"""

from __future__ import annotations

import statistics
import time

import torch


def device_of(name: str | None = None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def peak_forward_bytes(model, batches: tuple[int, ...], image_size: int, in_chans: int, device: torch.device,
                       dtype: torch.dtype, build: dict) -> list[int]:
    """Peak bytes a forward pass of each batch size adds to the memory in use (weights excluded).

    On a GPU: the allocator's peak statistics. On the CPU: the process's peak resident memory in a fresh child
    process (spawned: a forked child of a process that has run OpenMP work can hang), batches in increasing
    order so each one's high-water mark is its own.
    """
    if device.type == "cuda":
        peaks = []
        for batch in batches:
            x = torch.randn(batch, in_chans, image_size, image_size, device=device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                model(x)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        return peaks
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_cpu_peaks, (build, sorted(batches), image_size, in_chans, dtype))


def _cpu_peaks(build: dict, batches: list[int], image_size: int, in_chans: int, dtype: torch.dtype) -> list[int]:
    import os
    import resource

    from ..models import create_model

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    model = create_model(**build).eval()
    base, peaks = resident(), []
    for batch in batches:
        x = torch.randn(batch, in_chans, image_size, image_size)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(x)
        del x
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    return peaks


def images_per_second(model, batch: int, image_size: int, in_chans: int, device: torch.device, dtype: torch.dtype,
                      *, seconds: float = 2.0, warmup: int = 2) -> float:
    x = torch.randn(batch, in_chans, image_size, image_size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + 50):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                if sum(times) > seconds and len(times) >= 3:
                    break
    return batch / statistics.median(times)


def measure(*, model: str, overrides: dict | None = None, image_size: int, in_chans: int = 3, batch: int = 8,
            memory_cap_gb: float = 4.0, precision: str = "bf16", seconds: float = 2.0, device: str | None = None) -> dict:
    """One point of Figure 12: images/s at `batch`, and the largest batch under `memory_cap_gb`."""
    from ..models import count_flops, create_model

    dev = device_of(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    build = dict(name=model, image_size=image_size, in_chans=in_chans, **(overrides or {}))
    net = create_model(**build).eval().to(dev)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    small, large = 4, 32
    at_small, at_large = peak_forward_bytes(net, (small, large), image_size, in_chans, dev, dtype, build)
    per_image = max((at_large - at_small) / (large - small), 1.0)
    fixed = max(at_small - small * per_image, 0.0)  # what a forward pass needs whatever the batch
    max_batch = max(0, int((memory_cap_gb * 2**30 - weights - fixed) // per_image))
    return {"image_size": image_size, "batch": batch,
            "images_per_s": images_per_second(net, batch, image_size, in_chans, dev, dtype, seconds=seconds),
            "mb_per_image": per_image / 2**20, "fixed_mb": fixed / 2**20, "weights_mb": weights / 2**20,
            "max_batch": max_batch, "memory_cap_gb": memory_cap_gb, "precision": precision, "device": dev.type,
            "threads": torch.get_num_threads(), "gflops_per_image": count_flops(net.config, image_size) / 1e9}
