"""Run every benchmark in this folder, one after another (``make bench``).

Each script prints its table and writes JSON (and usually Markdown) to benchmarks/results/.
Pass ``--preset smoke`` to check they all run (minutes) instead of measuring (hours).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# order: cheap first; the training benchmarks last
ORDER = ["eval_speed", "synth_speed", "data_loader", "quant_speed", "quant", "prune", "imitation_gain"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", choices=["smoke", "full"], default="full")
    ap.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    args = ap.parse_args()
    scripts = {p.stem: p for p in HERE.glob("*.py") if p.stem != "run_all"}
    names = [n for n in ORDER if n in scripts] + sorted(set(scripts) - set(ORDER))
    if args.only:
        names = [n for n in names if n in args.only]
    failed = []
    for name in names:
        cmd = [sys.executable, str(scripts[name])]
        if "--preset" in scripts[name].read_text():
            cmd += ["--preset", args.preset]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} in {time.perf_counter() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
