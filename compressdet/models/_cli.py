"""``compressdet info MODEL``: MACs and parameters of a registered model or a saved model file;
``compressdet anchors RECIPE``: how well a RetinaNet's anchor sizes fit the recipe's training boxes."""

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


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_model, is_model, load_model, model_summary

    src = args.model
    if is_model(src):
        kw = {"width": args.width} if args.width is not None else {}
        model = build_model(src, image_size=args.image_size or (384, 1248), **kw)
    elif Path(src).is_file():
        model, _ = load_model(src)
    else:
        from . import list_models

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
        t.add_row(r["stage"], str(r["out_channels"]), str(r["reduction"]), _fmt(r["macs"]), _fmt(r["params"]),
                  _fmt(r["params_with_bn_stats"]))
    t.add_section()
    for part in ("backbone", "head", "total"):
        t.add_row(f"[bold]{part}[/]", "", "", _fmt(s["macs"][part]), _fmt(s["params"][part]),
                  _fmt(s["params_with_bn_stats"][part]))
    print_whole(console(), t)
    print(f"output: {s['output_shape'][0]} x {s['output_shape'][1]} x {s['output_shape'][2]} "
          f"(channels x grid), feature channels {s['feature_channels']}")
    return 0


def _cmd_anchors(args: argparse.Namespace) -> int:
    import torch

    from ..data import prepare_data
    from ..data.records import input_boxes
    from ..recipe import load_recipe
    from .torchvision_det import DEFAULT_ANCHOR_SCALES, suggest_anchor_scale

    recipe = load_recipe(args.recipe, args.overrides)
    if args.model:
        arch = args.model
    else:
        archs = [m.arch for s in recipe.stages if (m := recipe.resolve_model(s)) is not None]
        arch = next((a for a in archs if a.startswith("retinanet_")), None)
        if arch is None:
            raise UserError(f"{args.recipe}: no stage builds a retinanet_* model (pass --model NAME)")
    if not arch.startswith("retinanet_"):
        raise UserError(f"--model {arch}: only retinanet_* models have anchors to size")
    prepare_data(recipe.data)  # SynthKITTI: generated on first use, as a run would
    boxes = torch.from_numpy(input_boxes(recipe.data, args.split, args.max_images))
    if not len(boxes):
        raise UserError(f"{args.recipe}: the {args.split} split has no boxes of {', '.join(recipe.data.classes)}")
    size = tuple(recipe.data.image_size)
    best, fits = suggest_anchor_scale(arch, boxes, size, len(recipe.data.classes),
                                      args.scales or DEFAULT_ANCHOR_SCALES)
    if args.json:
        print(json.dumps({"model": arch, "split": args.split, "image_size": list(size), "best": best,
                          "fits": {str(k): v for k, v in fits.items()}}, indent=2))
        return 0
    from rich.table import Table

    from .._console import console, print_whole

    t = Table(title=f"{arch} anchors vs {len(boxes)} {args.split} boxes at {size[0]}x{size[1]}")
    for col in ("anchor_scale", "smallest anchor px", "best IoU >= 0.5", "best IoU < 0.4", "median best IoU"):
        t.add_column(col, justify="right")
    for s, f in fits.items():
        t.add_row(f"{s:g}" + (" *" if s == best else ""), f"{s * 8:.0f}", f"{f['foreground']:.0%}",
                  f"{f['low_quality_only']:.0%}", f"{f['median_best_iou']:.2f}")
    print_whole(console(), t)
    print(f"suggested: model.anchor_scale: {best:g}  (boxes whose best anchor reaches IoU 0.5 are trained as "
          "foreground; the others only through their one best anchor)")
    return 0


def _scales(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales: comma-separated numbers, got '{text}'") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"--scales: positive numbers, got '{text}'")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="model MACs and parameters",
                              description="Print backbone/head MACs and parameters of a model name or file.")
    p.add_argument("model", help="a registered model name (e.g. shuffledet_0.25x) or a saved model file")
    p.add_argument("--image-size", type=_parse_size, default=None, metavar="HxW",
                   help="input size (default: 384x1248, or the size stored in a model file)")
    p.add_argument("--width", type=float, default=None, help="width multiplier for 'shuffledet'")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_info)
    a = subparsers.add_parser("anchors", help="fit a RetinaNet's anchor sizes to a recipe's boxes",
                              description="For each anchor scale, the share of the recipe's training boxes whose "
                              "best anchor reaches the matcher's foreground IoU (0.5), and a suggested "
                              "model.anchor_scale. Reads labels only.")
    a.add_argument("recipe", help="YAML recipe (its data block is read)")
    a.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as for run")
    a.add_argument("--model", default=None, help="retinanet_* model (default: the recipe's first)")
    a.add_argument("--split", default="train", choices=("train", "val", "test"))
    a.add_argument("--scales", type=_scales, default=None, help="comma-separated (default 1,1.5,2,3,4)")
    a.add_argument("--max-images", type=int, default=None)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_cmd_anchors)
