"""Latency timing: warm-up, then per-call wall time (CPU) or CUDA-event time (GPU); median and p90."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

__all__ = ["measure_latency", "measure_cuda_latency", "set_threads"]


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (when given) and return the count in use."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


def measure_latency(fn: Callable[[], Any], *, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls.

    Args:
        fn: one inference on a fixed input (it must block until the result is ready).

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs"}``.
    """
    if runs <= 0:
        raise ValueError(f"runs must be positive, got {runs}")
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - t0) * 1e3
    return _summary(times)


def _summary(times: np.ndarray) -> dict[str, float]:
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "mean_ms": float(times.mean()), "min_ms": float(times.min()), "runs": int(len(times))}


def measure_cuda_latency(enqueue: Callable[[], Any], stream: Any, *, runs: int = 50, warmup: int = 5) -> dict[str, Any]:
    """Time ``enqueue()`` (asynchronous work on ``stream``) with CUDA events, ``runs`` times after ``warmup``.

    Each run is bracketed by events recorded on ``stream`` and waited for, so the time is the
    device's, not the host's enqueue time, and runs do not overlap.

    Args:
        enqueue: launches one inference on ``stream`` (inputs already on the device) and returns.
        stream: a ``torch.cuda.Stream``.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "timer": "cuda_events"}``.
    """
    import torch

    if runs <= 0:
        raise ValueError(f"runs must be positive, got {runs}")
    for _ in range(warmup):
        enqueue()
    stream.synchronize()
    times = np.empty(runs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(runs):
        start.record(stream)
        enqueue()
        end.record(stream)
        end.synchronize()
        times[i] = start.elapsed_time(end)
    return {**_summary(times), "timer": "cuda_events"}
