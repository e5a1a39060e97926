"""``compressdet bench``: measure every model stage of a run (the latest by default)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ._args import parse_ints, parse_size

__all__ = ["register"]


def _cmd_bench(args: argparse.Namespace) -> int:
    from .._console import console as make_console
    from ..bench.report import print_table
    from ..bench.runner import BenchOptions, bench_run
    from ..export.formats import backend_format
    from ..rundir import latest_run_or_fail

    console = make_console()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        backend_format(b)
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = latest_run_or_fail(args.runs_root, "pass RUN_DIR", lambda m: console.print(m, highlight=False))
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    opts = BenchOptions(backends=backends, image_size=parse_size(args.image_size) if args.image_size else None,
                        runs=args.runs, warmup=args.warmup, rounds=args.rounds,
                        batch_sizes=parse_ints(args.batch_sizes, "--batch-sizes"),
                        threads=args.threads, val=args.val, split=args.split,
                        stages=[s for s in args.stages.split(",") if s] if args.stages else None,
                        protocol=args.protocol, metric=args.metric)
    if args.runs <= 0:
        raise UserError("--runs must be positive")
    if args.rounds <= 0:
        raise UserError("--rounds must be positive")
    out = args.out or Path(run_dir) / "bench"
    report = bench_run(run_dir, out, opts, log=lambda s: console.print(s, highlight=False, markup=False))
    print_table(report, console)
    console.print(f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'pareto.png'}", highlight=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..export.formats import BACKENDS

    p = subparsers.add_parser(
        "bench", help="benchmark every model stage of a run (MACs, params, latency, mAP)",
        description="Measure every finished model stage of a run (default: the latest under runs/): backbone and "
                    "total MACs (multiply-accumulates; FLOPs ~ 2 x MACs), params, parameter bytes, file size, latency "
                    "per backend (median and p90 after warm-up) and AP on the val split (--split test: the held-out "
                    "one; KITTI AP or COCO AP as --metric says); writes report.md, report.json and pareto.png "
                    "into RUN_DIR/bench. CPU latency: each "
                    "model on each backend is timed in fresh processes of its own (report.json: timer "
                    "isolated_process), never interleaved with another model in one process.")
    p.add_argument("run_dir", nargs="?", type=Path, default=None, metavar="RUN_DIR",
                   help="run directory (default: the most recent run under --runs-root)")
    p.add_argument("--backends", default="torch,ort,ort-int8", help=f"comma-separated, of: {', '.join(BACKENDS)}")
    p.add_argument("--image-size", default=None, metavar="HxW", help="latency input size (default: the model's)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first, in every timing process (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="CPU backends: each model is timed in this many fresh processes of its own, models "
                        "alternating (default 3; --runs are split over them)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ORT (default: torch's)")
    p.add_argument("--val", action=argparse.BooleanOptionalAction, default=True, help="evaluate mAP (on --split)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="split the mAP is measured on (test: the held-out split, for a final report)")
    p.add_argument("--stages", default=None, help="comma-separated stages to measure (default: all model stages)")
    p.add_argument("--protocol", choices=("official", "seed"), default="official",
                   help="KITTI AP protocol (KITTI metric only)")
    p.add_argument("--metric", choices=("kitti", "coco"), default=None,
                   help="KITTI AP or COCO AP (default: follows the run's data.format)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/bench)")
    p.add_argument("--runs-root", type=Path, default=Path("runs"), help="where to look for the latest run")
    p.set_defaults(func=_cmd_bench)
