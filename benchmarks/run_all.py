"""Run every benchmark in this folder, one after another (``make bench``).

Each script prints its table and writes JSON (and usually Markdown) to benchmarks/results/.
Pass ``--preset smoke`` to check they all run (minutes) instead of measuring (hours); scripts that take
``--results`` then write to a temporary folder instead of benchmarks/results/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# order: cheap first; the training benchmarks last
ORDER = ["eval_speed", "synth_speed", "data_loader", "quant", "fpn_speed", "fpn_prune_speed", "prune", "imitation_gain",
         "distill_methods", "families", "deploy"]  # deploy reads families' models
#: scripts here that are not benchmarks: README generation, the demo's assets, the CUDA-only check
#: (``python benchmarks/gpu_check.py`` on a GPU machine), the fuzzing run (``make fuzz``, its own budget);
#: ``_*.py`` are shared modules
NOT_BENCHMARKS = {"readme_tables", "demo_assets", "gpu_check", "fuzz"}


def invocations(name: str, text: str, preset: str, results: str | None = None) -> list[list[str]]:
    """Argument lists to run benchmark ``name`` with (its source is ``text``); scripts with
    sub-commands (``quant.py``) run each of them. ``results``: a results folder for scripts that take
    ``--results`` (smoke runs must not overwrite the measured tables)."""
    out = ["--results", results] if results and '"--results"' in text else []
    if preset == "full" and '"full"' not in text:  # the protocol benchmarks call their CUDA schedule "gpu"
        preset = "gpu" if '"gpu"' in text else "cpu"
    if name == "quant":
        smoke = preset == "smoke"
        return [[*out, "speed", *(["--widths", "0.25", "--runs", "5"] if smoke else [])],
                [*out, "size", *(["--widths", "0.25"] if smoke else [])], [*out, "accuracy", "--preset", preset]]
    return [[*out, *(["--preset", preset] if "--preset" in text else [])]]


def benchmark_scripts(folder: Path = HERE) -> dict[str, Path]:
    """The benchmarks in ``folder`` by name, cheap ones first (``ORDER``), then any new script by name; a
    helper that writes README or the demo's assets, or needs CUDA, is not a benchmark."""
    found = {p.stem: p for p in folder.glob("*.py")
             if p.stem not in NOT_BENCHMARKS | {"run_all"} and not p.stem.startswith("_")}
    return {n: found[n] for n in [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", choices=["smoke", "full"], default="full")
    ap.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    args = ap.parse_args(argv)
    scripts = benchmark_scripts()
    unknown = sorted(set(args.only or []) - set(scripts))
    if unknown:
        ap.error(f"--only {' '.join(unknown)}: not a benchmark here; known: {', '.join(scripts)}")
    names = [n for n in scripts if not args.only or n in args.only]
    failed = []
    smoke_results = tempfile.mkdtemp(prefix="bench_smoke_") if args.preset == "smoke" else None
    for name in names:
        for extra in invocations(name, scripts[name].read_text(), args.preset, smoke_results):
            cmd = [sys.executable, str(scripts[name]), *extra]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.call(cmd)
            print(f"== {name}: exit {rc} in {time.perf_counter() - t0:.0f}s", flush=True)
            if rc:
                failed.append(" ".join([name, *extra]))
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
