"""``compressdet deploy``: the fastest runtime and precision of a run's model that keeps its accuracy."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["register"]


def _source(args: argparse.Namespace, log: Any) -> tuple[Any, Path]:
    """The model to deploy (an ExportSource with the recipe whose data measure it) and the output folder."""
    from ..export.exporter import resolve_source
    from ..recipe import load_recipe

    target = args.model
    if target is not None and Path(target).is_file():
        if Path(target).suffix != ".pt":
            raise UserError(f"{target}: deploy takes a run directory or a model file (.pt); an exported graph "
                            "is one candidate already (compressdet bench measures it)")
        if args.data is None:
            raise UserError(f"{target}: a model file without its run: deploy needs data to calibrate and measure "
                            "accuracy on; pass --data RECIPE (a recipe whose data section names the images)")
    src = resolve_source(target, args.stage, runs_root=args.runs_root, log=log)
    if args.data is not None:
        src.recipe = load_recipe(args.data)
    out = args.out or ((src.run_dir / "deploy") if src.run_dir else src.model_path.parent / "deploy")
    return src, Path(out)


def _postprocess(src: Any) -> dict[str, Any]:
    """The stage's own decode settings (as predict uses them), else the defaults."""
    from ..recipe import PostprocessConfig

    cfg = None
    if src.recipe is not None and src.stage:
        try:
            cfg = getattr(src.recipe.stage(src.stage), "postprocess", None)
        except KeyError:
            cfg = None
    return (cfg or PostprocessConfig()).model_dump()


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .._console import console as make_console
    from ..deploy.runner import DeployOptions, deploy
    from ._args import parse_size

    console = make_console()

    def log(s: str) -> None:
        console.print(s, highlight=False, markup=False)

    if not math.isfinite(args.max_map_drop):  # nan would let every candidate through (drop > nan is False)
        raise UserError(f"--max-map-drop {args.max_map_drop}: expected a finite number of mAP points")
    for flag, v in (("--runs", args.runs), ("--rounds", args.rounds), ("--calibration-images", args.calibration_images)):
        if v <= 0:
            raise UserError(f"{flag} {v}: must be positive")
    src, out = _source(args, log)
    opts = DeployOptions(target=args.target, image_size=parse_size(args.image_size) if args.image_size else None,
                         max_map_drop=args.max_map_drop, split=args.split, runs=args.runs, rounds=args.rounds,
                         warmup=args.warmup, threads=args.threads, calibration_images=args.calibration_images,
                         postprocess=_postprocess(src), protocol=args.protocol, max_images=args.max_images)
    rep = deploy(src, out, opts, log=log)
    console.print(f"wrote {out / 'deploy.json'}, {out / 'deploy.md'}, {out / 'deploy.png'}", highlight=False)
    console.print(rep["summary"], highlight=False, markup=False, soft_wrap=True)
    if rep["chosen"] is None:
        raise UserError(f"{out / 'deploy.json'}: {rep['summary']} (raise --max-map-drop to accept one)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deploy", help="find the fastest runtime and precision that keeps the accuracy; write it to RUN/deploy",
        description="Measure every way a model can be deployed on this machine: ONNX Runtime fp32, OpenVINO f32 and "
                    "its default precision (bf16 where the CPU has it), the run's own QAT/PTQ INT8 graph in ONNX "
                    "Runtime and OpenVINO, OpenVINO INT8 by NNCF post-training quantization (and TensorRT fp16/INT8 "
                    "with --target cuda). Each candidate's precision is read back from its runtime, its latency "
                    "timed in processes of its own (alternating rounds) and its mAP measured against PyTorch fp32; "
                    "the fastest within --max-map-drop is copied to RUN/deploy with deploy.json, deploy.md and a "
                    "mAP-vs-latency chart. `compressdet predict --model RUN/deploy` runs it. Without "
                    "compressdet[openvino] only the ONNX Runtime candidates are measured.")
    p.add_argument("model", nargs="?", default=None, metavar="RUN_OR_MODEL",
                   help="run directory (default: the latest under --runs-root) or a model file .pt (with --data)")
    p.add_argument("--stage", default=None,
                   help="the run's stage to deploy (default: the last with a model or an INT8 graph; a qat/ptq "
                        "stage: its float source plus its own INT8 graph)")
    p.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--image-size", default=None, metavar="HxW", help="deploy input size (default: the model's)")
    p.add_argument("--max-map-drop", type=float, default=0.5,
                   help="largest mAP loss (points below PyTorch fp32) a candidate may have (default 0.5)")
    p.add_argument("--split", choices=("val", "test"), default="val", help="split the mAP is measured on")
    p.add_argument("--runs", type=int, default=50, help="timed runs per candidate (default 50)")
    p.add_argument("--rounds", type=int, default=3,
                   help="each candidate is timed in this many fresh processes, candidates alternating (default 3)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first in every timing process (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of every runtime (default: torch's)")
    p.add_argument("--calibration-images", type=int, default=64, help="train images NNCF calibrates on (default 64)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate on at most this many images")
    p.add_argument("--protocol", choices=("official", "seed"), default="official", help="KITTI AP protocol")
    p.add_argument("--data", type=Path, default=None, metavar="RECIPE",
                   help="recipe whose data calibrate and evaluate (default: the run's recipe.yaml)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/deploy)")
    p.add_argument("--runs-root", type=Path, default=Path("runs"), help="where to look for the latest run")
    p.set_defaults(func=_cmd_deploy)
