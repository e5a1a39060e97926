"""``compressdet run RECIPE``: a recipe's stages end to end (or resumed), through ``compressdet.run``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["register"]


def _cmd_run(args: argparse.Namespace) -> int:
    from ..api import run

    run_dir = run(args.recipe, args.overrides, run_dir=args.run_dir, resume=args.resume, from_stage=args.from_stage,
                  only=args.only, runs_root=args.runs_root).path
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"finished: {run_dir}")
        print(f"next: compressdet export {run_dir} --onnx   |   compressdet bench {run_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run a recipe's stages", description="Run a recipe end to end, or resume it.")
    r.add_argument("recipe", type=Path, help="YAML recipe")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. stages.student.schedule.steps=200 or data.image_size=[192,624]")
    r.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<name>/<time>)")
    r.add_argument("--runs-root", type=Path, default=Path("runs"), help="where new run directories go")
    r.add_argument("--resume", action="store_true", help="continue the latest (or --run-dir) run: finished "
                   "stages are verified and skipped, an interrupted one restarts from its last checkpoint")
    r.add_argument("--from-stage", default=None, metavar="NAME", help="re-run this stage and all after it")
    r.add_argument("--only", default=None, metavar="STAGE", help="run only this stage (its inputs must be done)")
    r.set_defaults(func=_cmd_run)
