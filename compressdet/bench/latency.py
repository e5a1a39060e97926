"""Latency timing: warm-up, then per-call wall time (CPU) or CUDA-event time (GPU); median and p90.

CPU models are compared in isolated processes (:func:`time_isolated`, what ``compressdet bench`` uses;
:func:`compare_onnx_isolated` for plain ONNX files): each model in a fresh process of its own,
models alternating over rounds. Never time several ORT sessions interleaved in one process (see
:func:`compare_latency`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["compare_latency", "compare_onnx_isolated", "time_isolated", "TimingJob", "measure_latency",
           "measure_cuda_latency", "set_threads"]


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
            times[name] += _run_child([str(path), "--runs", str(per_round), "--threads", str(threads), "--warmup",
                                       str(warmup)], str(path))
    return {k: _summary(np.asarray(v)) for k, v in times.items()}


@dataclass(frozen=True)
class TimingJob:
    """One model on one CPU backend, for :func:`time_isolated`.

    Attributes:
        backend: a :data:`compressdet.bench.backends.CPU_BACKENDS` name.
        path: the file that backend opens (model ``.pt``/``.pt2``, ONNX, IR ``.xml``).
        batch_sizes: timed one after the other in the same process.
        image_size: (H, W) of the input (a deterministic image-like input, batch repeated).
    """

    backend: str
    path: str
    batch_sizes: tuple[int, ...] = (1,)
    image_size: tuple[int, int] = (384, 1248)


def _child_env() -> dict[str, str]:
    """The environment of a timing child: it must import this same compressdet (not another checkout's)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _run_child(args: list[str], what: str) -> Any:
    cmd = [sys.executable, "-m", "compressdet.bench.latency", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if out.returncode != 0:
        raise RuntimeError(f"timing {what} failed (exit {out.returncode}): "
                           f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_isolated(jobs: Mapping[str, TimingJob], *, runs: int = 50, rounds: int = 3, threads: int = 2,
                  warmup: int = 5) -> dict[str, dict[str, Any]]:
    """Time each job in fresh processes of its own, jobs alternating over ``rounds`` (the bench's protocol).

    Each round starts one process per job in turn; the process opens the model on its backend,
    and for each batch size times ``runs // rounds`` (at least 1) runs after ``warmup``. Nothing of
    another model (an idle ORT session's spinning threads, caches, allocator state) touches a
    measurement, and load drift on a shared machine hits every job alike.

    Returns:
        ``{name: {"b<N>": {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "timer": "isolated_process",
        "pids": [one per round], "rounds"} | {"skipped": reason}, "precision", "info", "pids"}}``.

    Raises:
        RuntimeError: a child failed (its last stderr line is in the message).
    """
    if runs <= 0 or rounds <= 0:
        raise ValueError(f"runs and rounds must be positive, got runs={runs}, rounds={rounds}")
    per_round = max(1, -(-runs // rounds))
    times: dict[str, dict[str, list[float]]] = {k: {} for k in jobs}
    skipped: dict[str, dict[str, str]] = {k: {} for k in jobs}
    pids: dict[str, list[int]] = {k: [] for k in jobs}
    meta: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="compressdet-timing-") as tmp:
        inputs = _input_files({tuple(j.image_size) for j in jobs.values()}, Path(tmp))
        for _ in range(rounds):
            for name, job in jobs.items():
                res = _run_child([str(job.path), "--backend", job.backend, "--runs", str(per_round), "--threads",
                                  str(threads), "--warmup", str(warmup), "--batch-sizes",
                                  ",".join(map(str, job.batch_sizes)), "--input", str(inputs[tuple(job.image_size)])],
                                 f"{job.path} ({job.backend})")
                pids[name].append(int(res["pid"]))
                meta[name] = {"precision": res["precision"], "info": res.get("info", {})}
                for b, t in res["times"].items():
                    times[name].setdefault(b, []).extend(t)
                skipped[name].update(res.get("skipped", {}))
    out: dict[str, dict[str, Any]] = {}
    for name, job in jobs.items():
        cells: dict[str, Any] = {**meta[name], "pids": pids[name]}
        for bs in job.batch_sizes:
            key = f"b{bs}"
            if key in times[name]:
                cells[key] = {**_summary(np.asarray(times[name][key])), "timer": "isolated_process",
                              "pids": pids[name], "rounds": rounds}
            else:
                cells[key] = {"skipped": skipped[name].get(key, "not timed")}
        out[name] = cells
    return out


def _input_files(sizes: set[tuple[int, int]], folder: Path) -> dict[tuple[int, int], Path]:
    """The timing input of each image size as ``.npy`` (one image; a child repeats it to its batch sizes).

    Made here, where torch is already loaded, so that an ONNX Runtime or OpenVINO child starts without
    importing torch (seconds per child); every backend is timed on the same bytes."""
    from ..export._onnx import synthetic_image

    out = {}
    for i, size in enumerate(sorted(sizes)):
        out[size] = folder / f"input{i}_{size[0]}x{size[1]}.npy"
        np.save(out[size], synthetic_image(size).numpy())
    return out


def _time_backend(backend: str, path: str, batch_sizes: list[int], image: np.ndarray, runs: int, threads: int,
                  warmup: int) -> dict[str, Any]:
    """One process's share of :func:`time_isolated`: open ``path`` on ``backend``, time each batch size
    on ``image`` (``[1, 3, H, W]`` float32) repeated to it."""
    from .backends import open_backend, shape_mismatch

    b = open_backend(backend, path, threads=threads)
    size = tuple(image.shape[-2:])
    res: dict[str, Any] = {"pid": os.getpid(), "precision": b.precision, "info": b.info, "times": {}, "skipped": {}}
    for bs in batch_sizes:
        why = shape_mismatch(b.input_shape, bs, size) if b.input_shape is not None else None
        if why and backend == "torch" and str(path).endswith(".pt2"):
            why = "the quantized .pt2 program was exported for batch 1"
        if why:
            res["skipped"][f"b{bs}"] = why
            continue
        x = np.ascontiguousarray(np.repeat(image, bs, axis=0))
        res["times"][f"b{bs}"] = _timed_runs(lambda: b.fn(x), runs, warmup).tolist()
    return res


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


if __name__ == "__main__":  # the child process of compare_onnx_isolated / time_isolated
    import argparse

    ap = argparse.ArgumentParser(description="time one model in this process: without --backend an ONNX file in ONNX "
                                             "Runtime on zeros of its static shape (prints a JSON list of ms); with "
                                             "--backend a dict {pid, precision, times: {b<N>: [ms]}, skipped}")
    ap.add_argument("model")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--input", default=None, metavar="NPY", help="the image to time on, [1, 3, H, W] float32 "
                    "(what time_isolated passes); else --size's synthetic image")
    ap.add_argument("--size", default=None, metavar="HxW")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    if a.backend is None:
        print(json.dumps(_time_onnx(a.model, a.runs, a.threads, a.warmup)))
    else:
        if a.input:
            img = np.load(a.input).astype(np.float32, copy=False)
            if img.ndim != 4 or img.shape[:2] != (1, 3):
                ap.error(f"--input {a.input}: expected one image [1, 3, H, W], got shape {list(img.shape)}")
        elif a.size:
            from ..export._onnx import synthetic_image

            img = synthetic_image(tuple(int(v) for v in a.size.split("x"))).numpy()
        else:
            ap.error("--backend needs --input or --size")
        print(json.dumps(_time_backend(a.backend, a.model, [int(v) for v in a.batch_sizes.split(",")], img, a.runs,
                                       a.threads, a.warmup)))
