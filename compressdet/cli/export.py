"""``compressdet export``: ONNX / INT8 ONNX / OpenVINO IR / TensorRT from a run (latest by default) or a model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..export.formats import formats_help

__all__ = ["register", "formats_from_flags"]


def formats_from_flags(onnx: bool, int8: bool, tensorrt: bool, openvino: bool = False,
                       ultralytics: bool = False) -> list[str]:
    """Map ``--onnx/--int8/--openvino/--tensorrt/--ultralytics`` to format names (``--openvino --int8`` adds
    ``openvino-int8``: the IR of the INT8 QDQ graph; ``--ultralytics`` alone builds no ONNX graph).

    Raises:
        UserError: no format asked for, or ``--int8`` without ``--onnx``/``--openvino``/``--tensorrt``.
    """
    if int8 and not (onnx or tensorrt or openvino):
        raise UserError("--int8 needs --onnx (INT8 QDQ ONNX), --openvino (INT8 IR) or --tensorrt (INT8 engine from "
                        "the QDQ graph)")
    if not (onnx or tensorrt or openvino):
        if ultralytics:
            return ["ultralytics"]
        raise UserError("nothing to export: pass --onnx, --openvino, --tensorrt and/or --ultralytics (see "
                        "compressdet export --help)")
    out = ["onnx"]
    if int8:
        out.append("onnx-int8")
    if openvino:
        out.append("openvino")
        if int8:
            out.append("openvino-int8")
    if tensorrt:
        out.append("tensorrt")
    if ultralytics:
        out.append("ultralytics")
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    from .._console import console as make_console
    from ..export.exporter import export_model

    console = make_console()
    formats = formats_from_flags(args.onnx, args.int8, args.tensorrt, args.openvino, args.ultralytics)
    if args.opset < 13:
        raise UserError(f"--opset {args.opset}: ONNX Runtime's quantizer and NMS need opset 13 or newer")
    if args.with_postprocess and args.dynamic_batch:
        raise UserError("--with-postprocess builds a batch-1 graph; it cannot be combined with --dynamic-batch")
    source, results = export_model(args.path, formats, stage=args.stage, out_dir=args.out, runs_root=args.runs_root,
                                   log=lambda s: console.print(s, highlight=False, markup=False),
                                   opset=args.opset, dynamic_batch=args.dynamic_batch,
                                   with_postprocess=args.with_postprocess, tolerance=args.tolerance,
                                   calibration_images=args.calibration_images)
    for name, info in results.items():
        console.print(f"[green]ok[/] {name}: {info['path']} ({info['bytes'] / 1e6:.2f} MB)")
    if "onnx" not in results:  # the Ultralytics checkpoint only
        console.print(f"next: python -c \"from ultralytics import YOLO; YOLO('{results['ultralytics']['path']}')"
                      f".predict('image.png')\"", highlight=False, markup=False)
        return 0
    target = source.run_dir if source.run_dir else Path(results["onnx"]["path"]).parent
    console.print(f"next: compressdet bench {target}" if source.run_dir else
                  f"next: python -c \"import onnxruntime as o; o.InferenceSession('{results['onnx']['path']}')\"",
                  highlight=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX / INT8 ONNX / OpenVINO / TensorRT / Ultralytics",
        description="Export a run's model (default: the latest run under runs/, its last model stage) or a model "
                    "file. Every ONNX file is checked with onnx.checker and run in ONNX Runtime against PyTorch; "
                    "a mismatch above --tolerance fails the export and leaves no file.",
        epilog=formats_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", type=Path, default=None, metavar="RUN_DIR|MODEL_FILE",
                   help="run directory or model file (default: the most recent run under --runs-root)")
    p.add_argument("--stage", default=None, metavar="NAME", help="stage of the run to export (default: the last "
                   "stage with a model)")
    p.add_argument("--onnx", action="store_true", help="fp32 ONNX: input 'images', outputs the detector's raw "
                   "tensors, named by its export_outputs (ShuffleDet: head; FCOS: cls_logits, bbox_regression, "
                   "bbox_ctrness; RetinaNet: cls_logits, bbox_regression)")
    p.add_argument("--int8", action="store_true", help="also an INT8 QDQ ONNX (the QAT/PTQ stage's, else static PTQ)")
    p.add_argument("--openvino", action="store_true", help="OpenVINO IR of the fp32 graph (with --int8: of the INT8 QDQ "
                   "graph too; needs the openvino extra)")
    p.add_argument("--tensorrt", action="store_true", help="TensorRT engine (needs the tensorrt extra and CUDA)")
    p.add_argument("--ultralytics", action="store_true", help="yolo models: an Ultralytics checkpoint "
                   "(<stage>.ultralytics.pt) that ultralytics.YOLO(path) loads, predicts and exports with")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18: dynamo exporter; 13-17: TorchScript)")
    p.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis")
    p.add_argument("--with-postprocess", action="store_true",
                   help="end the graph in decode + top-k + NMS: outputs boxes, scores, labels (batch 1)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |ORT - PyTorch| allowed (default 1e-3)")
    p.add_argument("--calibration-images", type=int, default=16, help="images for INT8 static PTQ (default 16)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: RUN_DIR/exports, or the model file's folder)")
    p.add_argument("--runs-root", type=Path, default=Path("runs"), help="where to look for the latest run")
    p.set_defaults(func=_cmd_export)
