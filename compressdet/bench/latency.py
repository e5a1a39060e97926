"""Latency timing: warm-up, then per-call wall time; median and p90 (robust to a busy machine)."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

__all__ = ["measure_latency", "set_threads"]


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
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "mean_ms": float(times.mean()), "min_ms": float(times.min()), "runs": int(runs)}
