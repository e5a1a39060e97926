"""``compressdet predict``: detections on images, folders, globs or videos, drawn and written as results."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _cmd_predict(args: argparse.Namespace) -> int:
    from .._console import console as make_console
    from ..conventions import KITTI_CLASSES
    from ..errors import UserError
    from ..predict.predictor import (
        SPLIT_PREFIX,
        PredictOptions,
        check_backend,
        iter_sources,
        predict,
        resolve_model,
        split_coco_gt,
        split_sources,
        write_split_ground_truth,
    )

    console = make_console(stderr=True)
    if args.backend is not None:
        check_backend(args.backend)
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        raise UserError(f"--score-threshold {args.score_threshold}: expected a value in [0, 1]")
    if args.draw_threshold is not None and not 0.0 <= args.draw_threshold <= 1.0:
        raise UserError(f"--draw-threshold {args.draw_threshold}: expected a value in [0, 1]")
    if args.max_images is not None and args.max_images <= 0:
        raise UserError(f"--max-images {args.max_images}: expected a positive number")
    sources = iter_sources(args.source)  # a missing source fails before the model is loaded
    resolved = resolve_model(args.model, args.backend, stage=args.stage, runs_root=args.runs_root,
                             log=lambda s: console.print(s, highlight=False, markup=False))
    if str(args.model or "").startswith("asset:"):  # a shipped demo model: say what it is not for
        from ..assets import asset_note

        console.print(asset_note(args.model), highlight=False, markup=False, soft_wrap=True)
    if args.coco_gt is not None and args.save_txt != "coco":
        raise UserError(f"--coco-gt {args.coco_gt}: only with --save-txt coco")
    coco_gt = args.coco_gt
    if args.source.startswith(SPLIT_PREFIX):
        sources = split_sources(resolved.run_dir, args.source[len(SPLIT_PREFIX):])
        if args.save_txt == "coco" and coco_gt is None:  # a coco-format run: that split's own annotation file
            split = args.source[len(SPLIT_PREFIX):]
            coco_gt = split_coco_gt(resolved.run_dir, split, list(resolved.classes),
                                    lambda s: console.print(s, highlight=False, markup=False))
            if coco_gt is None:  # any other format or a renaming class_map: the split as the model sees it
                coco_gt = write_split_ground_truth(resolved.run_dir, split, list(resolved.classes),
                                                   Path(args.out) / "ground_truth.coco.json")
                console.print(f"wrote {coco_gt}: {SPLIT_PREFIX}{split} in the model's classes (the ground truth "
                              "the detections' ids refer to)", highlight=False, markup=False, soft_wrap=True)
    sources = sources[: args.max_images] if args.max_images else sources
    opts = PredictOptions(out=args.out, score_threshold=args.score_threshold, draw_threshold=args.draw_threshold,
                          save_txt=args.save_txt,
                          save_images=not args.no_images, threads=args.threads, coco_gt=coco_gt)
    res = predict(sources, resolved, opts, console=console)
    what = f"{res['images']} images" + (f", {res['frames']} video frames" if res["frames"] else "")
    print(f"{what} on {resolved.backend} ({resolved.description}) at {res['images_per_s']} img/s -> {res['out']}"
          + (f" (results: {args.save_txt})" if args.save_txt else "")
          + (f"; boxes drawn at score >= {res['draw_threshold']:.3f} (see predict.json)" if not args.no_images else ""))
    if args.save_txt == "kitti":
        if all(c.lower() in KITTI_CLASSES for c in resolved.classes):
            print(f"next: compressdet eval --gt LABEL_DIR --det {Path(res['out']) / 'labels'}")
        else:  # the KITTI protocol scores car/pedestrian/cyclist only
            print("note: the KITTI protocol scores car, pedestrian, cyclist only: score these classes with "
                  "--save-txt coco and compressdet eval --format coco")
    elif args.save_txt == "coco":
        print(f"next: compressdet eval --format coco --gt {coco_gt or 'ANNOTATIONS.json'} "
              f"--det {Path(res['out']) / 'detections.coco.json'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..predict.predictor import PREDICT_BACKENDS

    p = subparsers.add_parser(
        "predict", help="detect objects in images, a folder, a glob or a video; draw and write results",
        description="Run a model on SOURCE (an image, a folder of images, a quoted glob such as 'imgs/*.png', or a "
                    "video file) with the same resize, normalisation, decode and NMS as evaluation (the run's "
                    "post-processing settings), and write PNGs (mp4 for a video) with boxes and scores, plus KITTI "
                    "txt files (OUT/labels/) or one COCO JSON (OUT/detections.coco.json).")
    p.add_argument("source", metavar="SOURCE", help="image, folder, glob (quote it), video (mp4/avi/mov/mkv/webm), "
                   "or split:train|val|test for the images of that split of the --model run's data")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N images of SOURCE")
    p.add_argument("--model", default=None, metavar="RUN|MODEL|ONNX|IR",
                   help="run directory (its last model stage; --stage picks another), a .pt model file (asset:<name> "
                        "for a shipped one), an .onnx graph or an OpenVINO .xml (default: the latest run under --runs-root)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help=f"one of {', '.join(PREDICT_BACKENDS)} (default: torch for a run or .pt, ort/ort-int8 for "
                        ".onnx, openvino/openvino-int8 for .xml)")
    p.add_argument("--stage", default=None, metavar="NAME",
                   help="stage of the run to use; a deploy stage (e.g. --stage deploy) runs what it chose, "
                        "like --model RUN/deploy")
    p.add_argument("--out", type=Path, default=Path("predictions"), metavar="DIR", help="output folder")
    p.add_argument("--score-threshold", type=float, default=None, metavar="T",
                   help="drop detections below T from the results and the pictures (default: the run's postprocess "
                        "score_thresh, 0.0: results keep every detection, as evaluation scores them)")
    p.add_argument("--draw-threshold", type=float, default=None, metavar="T",
                   help="draw only boxes scoring >= T (default: --score-threshold when given, else the score that "
                        "maximises F1 at IoU 0.5 on the val split of the model's run, chosen once and cached in "
                        "the run as predict_thresholds.json; 0.5 for a model without a run). The threshold used "
                        "and the boxes drawn are written to OUT/predict.json")
    p.add_argument("--save-txt", choices=("kitti", "coco"), default=None,
                   help="also write results: KITTI txt per image, or one COCO JSON")
    p.add_argument("--coco-gt", type=Path, default=None, metavar="ANN.json",
                   help="with --save-txt coco: write the image ids (matched by file name) and category ids (matched "
                        "by class name) of this COCO annotation file, so compressdet eval --format coco scores the "
                        "results against it (default for split:NAME of a coco-format run: that split's file)")
    p.add_argument("--no-images", action="store_true", help="write no PNG/mp4, results only")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the backend")
    p.add_argument("--runs-root", type=Path, default=Path("runs"), help="where to look for the latest run")
    p.set_defaults(func=_cmd_predict)
