"""A wall-clock budget for the long benchmarks: they stop *between* runs, never inside one.

A benchmark of many hours runs in parts (sessions, a shared machine): ``COMPRESSDET_BENCH_MINUTES=100
python benchmarks/distill_methods.py --preset calibrated --family fcos`` trains until 100 minutes have
passed since the benchmark started, then exits with code 3 (:data:`EXIT`) before the next run that would
train (or time, or export), naming it. Finished runs are in the ledger and the run folders, so the same
command later continues where it stopped; runs the ledger already holds are read back whatever the budget,
so a benchmark whose runs are all recorded finishes and writes its JSON even with the budget spent.

Why a budget and not a kill: a killed run loses the steps since its last checkpoint and may leave a
half-written cache; stopping between runs loses nothing. Unset (the default): no limit.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "COMPRESSDET_BENCH_MINUTES"
EXIT = 3  # "stopped on its budget, resumable": distinct from a failure (1) and a usage error (2)
_T0 = time.monotonic()  # the benchmark's start: when it first imported this module


def minutes() -> float | None:
    """The budget in minutes, None when unset."""
    v = os.environ.get(ENV, "").strip()
    if not v:
        return None
    try:
        m = float(v)
    except ValueError:
        raise SystemExit(f"{ENV}={v!r}: expected a number of minutes") from None
    if not m >= 0 or m == float("inf"):
        raise SystemExit(f"{ENV}={v!r}: expected a finite number of minutes >= 0")
    return m


def spent() -> bool:
    m = minutes()
    return m is not None and time.monotonic() - _T0 >= 60 * m


def check(before: str) -> None:
    """Exit :data:`EXIT` when the budget is spent, naming the work ``before`` which it stopped."""
    if spent():
        print(f"time budget spent ({ENV}={os.environ[ENV]}): stopping before {before}; finished runs are kept "
              "(ledger and run folders): run the same command again to continue", file=sys.stderr, flush=True)
        raise SystemExit(EXIT)
