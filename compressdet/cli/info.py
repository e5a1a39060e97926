"""``compressdet info MODEL``: MACs and parameters of a registered model or a saved model file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError

__all__ = ["register"]


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be HxW (e.g. 384x1248), got '{text}'") from None
    return h, w


def _fmt(n: int | float, unit: str = "") -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3f} {suf}{unit}"
    return f"{n} {unit}".strip()


def _opt(v: object) -> str:
    """A row's optional column (the FPN and yolo rows have no single out-channels / stride)."""
    return "-" if v is None else str(v)


def _output_shape(shape: list[int] | dict[str, list[int]]) -> str:
    """ShuffleDet's one grid tensor ``[C, H, W]``, or the named raw outputs of the FPN / yolo families
    (``{name: dims}``: FCOS/RetinaNet ``[K, C]``, yolo ``[C, K]``)."""
    if isinstance(shape, dict):
        return ", ".join(f"{name} {' x '.join(str(d) for d in dims)}" for name, dims in shape.items())
    return f"{' x '.join(str(d) for d in shape)} (channels x grid)"


def _cmd_info(args: argparse.Namespace) -> int:
    from ..models import build_model, is_model, load_model, model_summary

    src = args.model
    if is_model(src):
        kw = {"width": args.width} if args.width is not None else {}
        model = build_model(src, image_size=args.image_size or (384, 1248), **kw)
    elif Path(src).is_file():
        model, _ = load_model(src)
    else:
        from ..models import list_models

        raise UserError(f"'{src}' is neither a model name ({', '.join(list_models())}) nor a model file")
    size = args.image_size or model.image_size
    s = model_summary(model, size)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    from rich.table import Table

    from .._console import console, print_whole

    t = Table(title=f"{s['name']} at {size[0]}x{size[1]} (MACs = multiply-adds)")
    for col, just in (("part", "left"), ("out ch", "right"), ("stride", "right"), ("MACs", "right"),
                      ("params", "right"), ("params + BN stats", "right")):
        t.add_column(col, justify=just)
    for r in s["stages"]:
        t.add_row(r["stage"], _opt(r["out_channels"]), _opt(r["reduction"]), _fmt(r["macs"]), _fmt(r["params"]),
                  _fmt(r["params_with_bn_stats"]))
    t.add_section()
    for part in ("backbone", "head", "total"):
        t.add_row(f"[bold]{part}[/]", "", "", _fmt(s["macs"][part]), _fmt(s["params"][part]),
                  _fmt(s["params_with_bn_stats"][part]))
    print_whole(console(), t)
    print(f"output: {_output_shape(s['output_shape'])}, feature channels {s['feature_channels']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="model MACs and parameters",
                              description="Print backbone/head MACs and parameters of a model name or file.")
    p.add_argument("model", help="a registered model name (e.g. shuffledet_0.25x) or a saved model file")
    p.add_argument("--image-size", type=_parse_size, default=None, metavar="HxW",
                   help="input size (default: 384x1248, or the size stored in a model file)")
    p.add_argument("--width", type=float, default=None, help="width multiplier for 'shuffledet'")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_info)
