"""Bench: MACs, params, latency per backend and mAP for every model stage of a run.

Names resolve lazily (PEP 562): a timing child (``python -m compressdet.bench.latency``) then imports
only what it times with, not the report's evaluation and plotting stack (seconds per process).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"measure_latency": "latency", "markdown_report": "report", "pareto_plot": "report",
          "print_table": "report", "write_reports": "report", "BenchOptions": "runner", "bench_run": "runner",
          "collect_variants": "runner"}

__all__ = ["bench_run", "BenchOptions", "collect_variants", "measure_latency", "write_reports", "markdown_report",
           "pareto_plot", "print_table"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
