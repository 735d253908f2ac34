"""Inference throughput and the largest batch that fits a memory cap, against input size (Figure 12).

Images/s: the median of timed batches after warm-up, in inference mode. Memory: the peak that one forward pass
adds at two batch sizes (on a GPU torch's allocator statistics; on the CPU the peak resident memory of a fresh
process); it grows linearly in the batch, so the largest batch whose weights + activations fit `memory_cap_gb`
follows from the two points.
"""

from __future__ import annotations

import statistics
import time

import torch


def device_of(name: str | None = None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


PROBE_BATCHES = (4, 32, 256, 2048)
MIN_GROWTH = 32 * 2**20  # the CPU's page-level peak needs a large difference to be read reliably


def activation_memory(model, image_size: int, in_chans: int, device: torch.device, dtype: torch.dtype,
                      build: dict) -> tuple[float, float]:
    """(bytes per image, fixed bytes) that one forward pass adds to the memory in use, weights excluded.

    On a GPU: the allocator's peak statistics at batch 4 and 32. On the CPU: the peak resident memory of a
    fresh child process (spawned: a forked child of a process that has run OpenMP work can hang) at batch 4 and
    then larger batches until the peak has grown by MIN_GROWTH, so that allocator slack does not hide it.
    """
    if device.type == "cuda":
        peaks = [(b, _cuda_peak(model, b, image_size, in_chans, device, dtype)) for b in PROBE_BATCHES[:2]]
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            peaks = pool.apply(_cpu_peaks, (build, image_size, in_chans, dtype))
    (b0, p0), (b1, p1) = peaks[0], peaks[-1]
    per_image = max((p1 - p0) / (b1 - b0), 1.0)
    return per_image, max(p0 - b0 * per_image, 0.0)


def _cuda_peak(model, batch: int, image_size: int, in_chans: int, device: torch.device, dtype: torch.dtype) -> int:
    x = torch.randn(batch, in_chans, image_size, image_size, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        model(x)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _cpu_peaks(build: dict, image_size: int, in_chans: int, dtype: torch.dtype) -> list[tuple[int, int]]:
    import os
    import resource

    from ..models import create_model

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    model = create_model(**build).eval()
    base, peaks = resident(), []
    for batch in PROBE_BATCHES:  # increasing, so each high-water mark is this batch's own
        x = torch.randn(batch, in_chans, image_size, image_size)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(x)
        del x
        peaks.append((batch, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base))
        if len(peaks) > 1 and peaks[-1][1] - peaks[0][1] >= MIN_GROWTH:
            break
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
            memory_cap_gb: float = 4.0, precision: str = "bf16", seconds: float = 2.0, device: str | None = None,
            max_batch: bool = True, threads: int | None = None) -> dict:
    """One point of Figure 12: images/s at `batch`, and the largest batch under `memory_cap_gb`.

    `threads`: torch's CPU threads for this measurement (the paper reports speed per core: threads=1)."""
    if threads is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure(model=model, overrides=overrides, image_size=image_size, in_chans=in_chans, batch=batch,
                           memory_cap_gb=memory_cap_gb, precision=precision, seconds=seconds, device=device,
                           max_batch=max_batch)
        finally:
            torch.set_num_threads(previous)
    from ..models import count_flops, create_model

    dev = device_of(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    build = dict(name=model, image_size=image_size, in_chans=in_chans, **(overrides or {}))
    net = create_model(**build).eval().to(dev)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    row = {"image_size": image_size, "batch": batch,
           "images_per_s": images_per_second(net, batch, image_size, in_chans, dev, dtype, seconds=seconds),
           "weights_mb": weights / 2**20, "precision": precision, "device": dev.type,
           "threads": torch.get_num_threads(), "gflops_per_image": count_flops(net.config, image_size) / 1e9}
    if not max_batch:
        return row
    per_image, fixed = activation_memory(net, image_size, in_chans, dev, dtype, build)
    largest = max(0, int((memory_cap_gb * 2**30 - weights - fixed) // per_image))
    return {**row, "mb_per_image": per_image / 2**20, "fixed_mb": fixed / 2**20, "max_batch": largest,
            "memory_cap_gb": memory_cap_gb}
