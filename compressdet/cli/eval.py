"""``compressdet eval``: KITTI AP of a result folder, or COCO AP of a result JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError
from ._args import split_ids

__all__ = ["register"]


def _cmd_eval_coco(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json
    from ..eval.coco_eval import evaluate_coco_json
    from ..eval.inputs import load_coco_pair

    if args.ids is not None:
        raise DataError("--ids is for KITTI folders; a COCO evaluation covers the images of --gt")
    notes: list[str] = []
    gt, dets = load_coco_pair(args.gt, args.det, notes)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    res = evaluate_coco_json(gt, dets)
    name = args.name or Path(args.det).stem

    def f(v):
        return "-" if v is None else f"{v:.2f}"

    print(f"COCO box AP in %, {len(gt['images'])} images, {len(dets)} detections: {name}")
    print("| AP (%) | AP50 (%) | AP75 (%) | APs (%) | APm (%) | APl (%) | AR100 (%) |\n|---|---|---|---|---|---|---|")
    print("| " + " | ".join(f(res[k]) for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"))
          + " |")
    if args.json:
        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json
    from ..eval.inputs import load_kitti_dirs
    from ..eval.kitti_eval import evaluate_kitti
    from ..eval.table import format_table

    if args.format == "coco":
        return _cmd_eval_coco(args)
    gt, dets, ids = load_kitti_dirs(args.gt, args.det, split_ids(args.ids))
    res = {**evaluate_kitti(gt, dets, protocol=args.protocol), "ap_unit": "percent"}
    name = args.name or Path(args.det).name
    print(f"KITTI 2D AP in %, {len(ids)} images, protocol {args.protocol}")
    print(format_table([res, res], models=[f"{name} AP40", f"{name} AP11"], metrics=["ap40", "ap11"]), end="")
    print(f"mAP40 {res['map40']:.2f}  mAP11 {res['map11']:.2f}")
    if args.json:
        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="KITTI 2D AP of a result folder (official devkit rules) or COCO AP of a JSON",
                       description="Evaluate KITTI result files against label_2 ground truth (prints the seed's "
                       "table), or with --format coco a COCO result JSON against a COCO annotation JSON "
                       "(AP@[.5:.95], AP50, AP75, AP small/medium/large, AR100; faster-coco-eval).")
    e.add_argument("--format", choices=("kitti", "coco"), default="kitti",
                   help="kitti: --gt/--det are folders of .txt files; coco: --gt ANN.json --det DETS.json")
    e.add_argument("--gt", type=Path, required=True, help="label_2 folder (coco: the annotation JSON)")
    e.add_argument("--det", type=Path, required=True,
                   help="result folder: one <id>.txt per image, may be empty (coco: the result JSON list)")
    e.add_argument("--ids", type=Path, default=None, help="split file (default: every label file)")
    e.add_argument("--protocol", choices=("official", "seed"), default="official",
                   help="official devkit (short detections ignored) or the seed's old copy (not ignored)")
    e.add_argument("--json", type=Path, default=None, help="write the result as JSON")
    e.add_argument("--name", default=None, help="model name in the table (default: result folder name)")
    e.set_defaults(func=_cmd_eval)
