"""Fuzz every parser at a large budget: runs each ``tests/test_fuzz_*.py`` with ``COMPRESSDET_FUZZ_EXAMPLES``.

    python benchmarks/fuzz.py --examples 100000        (what ``make fuzz`` runs; hours on one core)
    python benchmarks/fuzz.py --examples 200           (a quick check that the runner works)
    python benchmarks/fuzz.py --minutes 60             (an hour's share of the budget; run again to go on)

Run it from a checkout nobody edits meanwhile (``git worktree add ../fuzz HEAD``): the count is for the code
digest it started with, and the JSON names the commit.

The budget is spent in rounds of ``--chunk`` examples per target, each round with its own Hypothesis seed
(so rounds explore different inputs); after every round the counts so far go into the JSON, and a later run
of the same code adds to them (the JSON's ``code`` digest: the package and the fuzz tests), so hours of
fuzzing survive a session that ends. A change to the code starts the count again.

Each fuzz target (a Hypothesis property: the outcome of arbitrary or mutated input is a valid result or a
one-line UserError) writes how many examples it ran into the folder named by ``COMPRESSDET_FUZZ_COUNT_DIR``;
this script collects them, with pytest's verdict per test from its JUnit XML, and writes
``benchmarks/results/fuzz.json``: per target the examples run and the failures found (0 or 1: Hypothesis
stops at the first failing example and shrinks it), and the total, which must be 0. Exit 1 otherwise.
Kept out of ``run_all.py`` (``make bench``): its budget is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compressdet._io import atomic_write_json  # noqa: E402


def _junit_outcomes(path: Path) -> dict[str, str]:
    """``{file::test: passed | failed | skipped}`` from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
            elif child.tag == "skipped":
                state = "skipped"
        out[name] = state
    return out


def _rel(f: Path) -> str:
    return str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f)


def code_digest(files: list[Path]) -> str:
    """sha256 over the package's sources and the fuzz tests: counts add up only while this stays the same."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([*(REPO / "compressdet").rglob("*.py"), *files]):
        h.update(_rel(f).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _commit() -> str | None:
    """The checked-out commit, ``+dirty`` when the package or tests differ from it (the digest decides)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "compressdet", "tests"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_rounds(examples: int, files: list[Path], out: Path, *, chunk: int, minutes: float | None,
               jobs: int = 1) -> dict:
    """Rounds of ``chunk`` examples per target until every target ran ``examples`` (or ``minutes`` passed),
    adding to what ``out`` recorded for the same code."""
    code = code_digest(files)
    prev = json.loads(out.read_text()) if out.is_file() else {}
    keep = prev.get("code") == code and prev.get("failures") == 0 and prev.get("rounds")
    targets = {k: dict(v) for k, v in prev["targets"].items()} if keep else {}
    rounds, seconds = (prev["rounds"], prev["seconds"]) if keep else (0, 0.0)
    t_end = time.perf_counter() + 60 * minutes if minutes else None
    rep = prev if keep else {}
    while not targets or min(t["examples"] for t in targets.values()) < examples:
        if t_end is not None and time.perf_counter() >= t_end:
            break
        one = run(chunk, files, None, seed=rounds, jobs=jobs)
        rounds += 1
        seconds += one["seconds"]
        for name, t in one["targets"].items():
            acc = targets.setdefault(name, {"examples": 0, "failures": 0})
            acc["examples"] += t["examples"]
            acc["failures"] += t["failures"]
        rep = {**one, "examples_per_target": examples, "chunk": chunk, "rounds": rounds, "code": code,
               "commit": _commit(),
               "targets": targets, "targets_run": len(targets),
               "examples_total": sum(t["examples"] for t in targets.values()),
               "complete": min(t["examples"] for t in targets.values()) >= examples if targets else False,
               "seconds": round(seconds, 1)}
        rep["failures"] = max(rep["failures"], sum(t["failures"] for t in targets.values()))
        atomic_write_json(out, rep)
        if rep["failures"]:
            break
    return rep


def run(examples: int, files: list[Path], out: Path | None, timeout: float | None = None,
        seed: int | None = None, jobs: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="compressdet-fuzz-") as tmp:
        counts, junit = Path(tmp) / "counts", Path(tmp) / "junit.xml"
        env = {**os.environ, "COMPRESSDET_FUZZ_EXAMPLES": str(examples), "COMPRESSDET_FUZZ_COUNT_DIR": str(counts),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t0 = time.perf_counter()
        seeded = [f"--hypothesis-seed={seed}"] if seed is not None else []
        # each target is one test: pytest-xdist runs them side by side, one per core
        spread = ["-n", str(jobs), "--dist", "load"] if jobs > 1 else []
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                               *spread, *seeded, *map(str, files)], cwd=REPO, env=env, timeout=timeout)
        seconds = time.perf_counter() - t0
        targets = {p.stem: json.loads(p.read_text()) for p in sorted(counts.glob("*.json"))} if counts.is_dir() else {}
        tests = _junit_outcomes(junit) if junit.is_file() else {}
    import hypothesis

    failed_tests = sorted(t for t, s in tests.items() if s == "failed")
    rep = {
        "examples_per_target": examples,
        "targets": targets,
        "targets_run": len(targets),
        "examples_total": sum(t["examples"] for t in targets.values()),
        # failing targets, or failing tests when more (a test that failed before its target could count)
        "failures": max(sum(t["failures"] for t in targets.values()), len(failed_tests)),
        "failed_tests": failed_tests,
        "pytest_exit": proc.returncode,
        "files": [_rel(f) for f in files],
        "seconds": round(seconds, 1),
        "versions": {"python": platform.python_version(), "hypothesis": hypothesis.__version__},
    }
    if proc.returncode != 0 and rep["failures"] == 0:
        rep["failures"] = 1  # pytest failed for a reason no target recorded: never report a clean run
    if out is not None:
        atomic_write_json(out, rep)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100_000, help="examples per fuzz target (default 100000)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz.json")
    ap.add_argument("--files", nargs="*", type=Path, default=None,
                    help="fuzz test files (default: every tests/test_fuzz_*.py)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="examples per target and round, each round seeded apart and recorded (default: one round "
                         "of --examples; make fuzz uses 5000)")
    ap.add_argument("--minutes", type=float, default=None, help="stop starting rounds after this long (with --chunk)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="targets run side by side, one per process (default: every core)")
    args = ap.parse_args(argv)
    files = [f.resolve() for f in args.files] if args.files else sorted((REPO / "tests").glob("test_fuzz_*.py"))
    if not files:
        print("no tests/test_fuzz_*.py found", file=sys.stderr)
        return 1
    if args.chunk:
        rep = run_rounds(args.examples, files, args.out, chunk=args.chunk, minutes=args.minutes, jobs=args.jobs)
    else:
        rep = run(args.examples, files, args.out, jobs=args.jobs)
    for name, t in rep["targets"].items():
        print(f"{name}: {t['examples']} examples, {t['failures']} failures")
    print(f"{rep['targets_run']} targets, {rep['examples_total']} examples, {rep['failures']} failures "
          f"({rep['seconds']} s); wrote {args.out}")
    return 0 if rep["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
