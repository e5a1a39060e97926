"""``compressdet data ...`` commands: ``data synth`` writes a SynthKITTI set."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

__all__ = ["register"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH like 1242x375, got '{text}'") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {w}x{h}")
    return w, h


def _oversample(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items:
        for part in it.split(","):
            name, _, val = part.partition("=")
            try:
                out[name.strip()] = float(val)
            except ValueError:
                raise UserError(f"--oversample: expected TYPE=FACTOR like Cyclist=3, got '{part}'") from None
    return out


def _cmd_synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..recipe import SynthConfig
    from .synth import generate_synth

    try:
        cfg = SynthConfig(num_images=args.num_images, size=args.size, seed=args.seed,
                          layouts=str(args.layouts) if args.layouts else None, val_fraction=args.val_fraction,
                          test_fraction=args.test_fraction,
                          layout_splits=str(args.layout_splits) if args.layout_splits else None,
                          oversample=_oversample(args.oversample))
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"data synth: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None

    def progress(i: int, n: int) -> None:
        if i == n or i % 50 == 0:
            print(f"\r{i}/{n} images", end="\n" if i == n else "", flush=True)

    out = generate_synth(args.out, cfg, progress=progress)
    print(f"wrote {out} ({cfg.num_images} images, {cfg.size[0]}x{cfg.size[1]})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="data sets: generate SynthKITTI",
                                 description="Data set tools.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("synth", help="write a SynthKITTI set (KITTI layout, synthetic pixels)",
                       description="Write training/image_2, training/label_2, ImageSets/{train,val,trainval}.txt, "
                       "README.md and settings.json. Same settings and seed give the same files.")
    s.add_argument("--out", type=Path, required=True, help="new folder to write")
    s.add_argument("--num-images", type=int, default=400)
    s.add_argument("--size", type=_size, default=(1242, 375), help="WxH (default 1242x375)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--layouts", type=Path, default=None,
                   help="folder of real KITTI label_2 files to take object layouts from")
    s.add_argument("--layout-splits", type=Path, default=None,
                   help="folder with train.txt / val.txt assigning layout files to splits "
                        "(default: the ImageSets/ beside the layouts' training/ folder)")
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--test-fraction", type=float, default=0.2, help="held-out test images (ImageSets/test.txt)")
    s.add_argument("--oversample", action="append", default=[], metavar="TYPE=FACTOR",
                   help="draw layouts/objects of a type more often, e.g. Cyclist=3 (repeatable)")
    s.set_defaults(func=_cmd_synth)
