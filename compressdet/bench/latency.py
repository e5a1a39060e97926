"""Latency timing: warm-up, then per-call wall time (CPU) or CUDA-event time (GPU); median and p90."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["compare_latency", "compare_onnx_isolated", "measure_latency", "measure_cuda_latency", "set_threads"]


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
    return _summary(_timed_runs(fn, runs, warmup))


def _timed_runs(fn: Callable[[], Any], runs: int, warmup: int) -> np.ndarray:
    """Wall ms of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def compare_latency(fns: Mapping[str, Callable[[], Any]], *, runs: int = 50, block: int = 5,
                    warmup: int = 3, drop_first: bool = True) -> dict[str, dict[str, float]]:
    """Time several models against each other on a shared machine: alternating blocks of runs.

    Why blocks: timing one model after another lets load drift bias the ratio, and interleaving single
    runs is worse. An idle ONNX Runtime session's worker threads keep spinning for a while after its
    run returns, so with interleaved runs every other session's threads compete with the one being
    timed: on this 2-core machine the 0.5x ShuffleDet at 384x1248 took 89.3 ms a run interleaved with
    five other sessions, 60.5 ms in blocks and 57.0 ms alone (``benchmarks/prune.py --preset latency``
    re-measures all three). Here each model runs ``block`` consecutive times per round, round-robin,
    and the first run of every block is dropped (it pays for the previous session's spinning threads and cold caches).

    Args:
        fns: ``{name: one blocking inference}``.
        runs: timed runs per model (rounded up to whole blocks).
        block: consecutive timed runs per model per round.
        warmup: untimed calls per model before timing.
        drop_first: drop each block's first run (``block=1, drop_first=False`` is the biased
            single-run interleaving, kept only to show the bias).

    Returns:
        ``{name: {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs"}}``.
    """
    if runs <= 0 or block <= 0:
        raise ValueError(f"runs and block must be positive, got runs={runs}, block={block}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(-(-runs // block)):
        for name, fn in fns.items():
            if drop_first:
                fn()  # dropped: the block's first run
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: _summary(np.asarray(v)) for k, v in times.items()}


def compare_onnx_isolated(models: Mapping[str, str | Path], *, runs: int = 50, rounds: int = 3, threads: int = 2,
                          warmup: int = 5) -> dict[str, dict[str, float]]:
    """Time ONNX models with ONNX Runtime (CPU), each in a fresh process of its own, alternating.

    The reference protocol for speed-up claims: a deployed detector runs alone in its process, so
    nothing of another model (spinning worker threads, caches, allocator state) may touch its time.
    Each of ``rounds`` rounds starts one process per model in turn that times ``runs // rounds``
    (at least 1) runs after ``warmup``; load drift on a shared machine hits every model alike.
    Input: zeros of the graph's static input shape (latency of these convolutional graphs does not
    depend on the values).

    Returns:
        ``{name: {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs"}}`` over all rounds.
    """
    if runs <= 0 or rounds <= 0:
        raise ValueError(f"runs and rounds must be positive, got runs={runs}, rounds={rounds}")
    per_round = max(1, -(-runs // rounds))
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, path in models.items():
            cmd = [sys.executable, "-m", "compressdet.bench.latency", str(path), "--runs", str(per_round),
                   "--threads", str(threads), "--warmup", str(warmup)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"timing {path} failed (exit {out.returncode}): "
                                   f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
            times[name] += json.loads(out.stdout.strip().splitlines()[-1])
    return {k: _summary(np.asarray(v)) for k, v in times.items()}


def _time_onnx(path: str, runs: int, threads: int, warmup: int) -> list[float]:
    """One process's share of :func:`compare_onnx_isolated`: ms per run of ``path`` on zeros."""
    from ..export.runtime import ort_session

    sess = ort_session(path, threads=threads)
    feed = {}
    for inp in sess.get_inputs():
        if not all(isinstance(d, int) for d in inp.shape):
            raise ValueError(f"{path}: input '{inp.name}' has a dynamic shape {inp.shape}; export with a fixed one")
        feed[inp.name] = np.zeros(inp.shape, dtype=np.float32)
    return _timed_runs(lambda: sess.run(None, feed), runs, warmup).tolist()


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


if __name__ == "__main__":  # the child process of compare_onnx_isolated
    import argparse

    ap = argparse.ArgumentParser(description="time one ONNX model with ONNX Runtime (prints a JSON list of ms)")
    ap.add_argument("onnx")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    print(json.dumps(_time_onnx(a.onnx, a.runs, a.threads, a.warmup)))
