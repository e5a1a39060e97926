"""``compressdet anchors RECIPE``: how well a RetinaNet's anchor sizes fit the recipe's training boxes.

A command, not library code: it joins the recipe, the data package (the training labels) and the models'
anchor fit, which the library packages may not import from each other."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError

__all__ = ["register"]


def _cmd_anchors(args: argparse.Namespace) -> int:
    import torch

    from ..data import prepare_data
    from ..data.records import input_boxes
    from ..models.torchvision_det import DEFAULT_ANCHOR_SCALES, suggest_anchor_scale
    from ..recipe import load_recipe

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
