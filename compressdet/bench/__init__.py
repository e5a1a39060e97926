"""Bench: MACs, params, latency per backend and mAP for every model stage of a run."""

from .latency import measure_latency
from .report import markdown_report, pareto_plot, print_table, write_reports
from .runner import BenchOptions, bench_run, collect_variants

__all__ = ["bench_run", "BenchOptions", "collect_variants", "measure_latency", "write_reports", "markdown_report",
           "pareto_plot", "print_table"]
