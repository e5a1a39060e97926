"""``compressdet data ...`` commands: ``data synth`` writes a SynthKITTI set; ``data convert`` between
formats; ``data stats`` (counts, size histogram PNG); ``data kitti --verify`` (sha256 of a download)."""

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

    from ..data.synth import generate_synth
    from ..recipe import SynthConfig

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


_FORMATS = ("coco", "yolo", "voc", "kitti")


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..data.convert import convert

    split_files = {}
    for item in args.split_file:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise UserError(f"--split-file: expected NAME=FILE like train=ImageSets/train.txt, got '{item}'")
        if name in split_files:
            raise UserError(f"--split-file: split '{name}' given twice")
        split_files[name] = path
    rep = convert(args.src, src_format=args.from_, dst_format=args.to, out=args.out, skip_bad=args.skip_bad,
                  drop_ignore=args.drop_ignore, splits=args.split or None, split_files=split_files or None)
    splits = ", ".join(f"{s} {n}" for s, n in rep["splits"].items())
    print(f"wrote {args.out} ({args.to}): {rep['images']} images ({splits}), {rep['boxes']} boxes, "
          f"{len(rep['categories'])} categories ({', '.join(rep['categories'])})")
    if rep["dropped_ignore_regions"]:
        why = ("--drop-ignore" if args.drop_ignore else "yolo has no ignore regions" if args.to == "yolo"
               else "KITTI DontCare is no voc class; difficult objects stay")
        print(f"dropped {rep['dropped_ignore_regions']} ignore regions (DontCare/crowd/difficult) ({why})")
    if rep["skipped"]:
        print("skipped (--skip-bad): " + ", ".join(f"{n} {k}" for k, n in rep["skipped"].items()))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json
    from ..data.convert import open_source, plot_size_histogram, stats
    from ..data.formats import Issues

    cfg = open_source(args.dir, args.format, skip_bad=args.skip_bad)
    st = stats(cfg, Issues(args.skip_bad), args.split or None)
    for s, sp in st["splits"].items():
        per = ", ".join(f"{c} {n}" for c, n in sp["boxes_per_class"].items()) or "none"
        sizes = ", ".join(f"{k} ({n})" for k, n in list(sp["image_sizes"].items())[:3])
        print(f"{s}: {sp['images']} images, {sp['boxes']} boxes ({per}), {sp['ignore_regions']} ignore regions; "
              f"image sizes {sizes}")
    if st["skipped"]:
        print("skipped (--skip-bad): " + ", ".join(f"{n} {k}" for k, n in st["skipped"].items()))
    if args.png:
        png = plot_size_histogram(st, args.png)
        print(f"wrote {png} (box size histogram)")
    if args.json:
        atomic_write_json(args.json, {k: v for k, v in st.items()} | {"splits": {
            s: {k: v for k, v in sp.items() if k != "box_sizes"} for s, sp in st["splits"].items()}})
        print(f"wrote {args.json}")
    return 0


def _cmd_kitti(args: argparse.Namespace) -> int:
    from ..data.verify import verify_kitti
    from ..errors import DataError

    if not args.verify:
        raise UserError("data kitti: pass --verify DIR (checks a KITTI download against the original sha256)")
    root = Path(args.verify)
    if not (root / "training").is_dir():
        raise DataError(f"{root}: no training/ folder (expected ROOT/training/image_2 and ROOT/training/label_2)")

    def progress(i: int, n: int) -> None:
        if i == n or i % 500 == 0:
            print(f"\rchecked {i}/{n} files", end="\n" if i == n else "", flush=True)

    rep = verify_kitti(root, write_split=not args.no_split, progress=progress if args.progress else None)
    for kind in ("missing", "corrupt"):
        for rel in rep[kind][: args.show]:
            print(f"{kind}: {root / rel}")
        if len(rep[kind]) > args.show:
            print(f"... and {len(rep[kind]) - args.show} more {kind} (all of them: --show N)")
    for p in rep["split_written"]:
        print(f"wrote {p} (MSCNN split)")
    line = (f"{root}: {rep['ok']} of {rep['checked']} files match the original KITTI training set, "
            f"{len(rep['missing'])} missing, {len(rep['corrupt'])} corrupt")
    if rep["missing"] or rep["corrupt"]:
        raise DataError(line + " (re-download or re-extract those files; nothing was written to the folder)")
    print(line + " (all good)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="data sets: SynthKITTI, convert, stats, KITTI verify",
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

    c = sub.add_parser("convert", help="convert a data set between coco, yolo, voc and kitti",
                       description="Read every split (train/val/test) of SRC and write it to DIR in another format. "
                       "Layouts: coco = annotations/<split>.json + images/; yolo = data.yaml + images/<split>, "
                       "labels/<split>; voc = Annotations/, JPEGImages/, ImageSets/Main/<split>.txt; kitti = "
                       "training/image_2, training/label_2, ImageSets/<split>.txt. Ignore regions (KITTI DontCare, "
                       "COCO iscrowd, VOC difficult) are kept where the target has them, else dropped with a count; "
                       "KITTI DontCare is no class in yolo/voc output. Beside the per-split files every split's "
                       "images are listed once more as a split of their own: coco annotations/all.json, yolo "
                       "all.txt, voc ImageSets/Main/all.txt, kitti ImageSets/all.txt.")
    c.add_argument("src", type=Path, help="source folder (yolo: the folder holding data.yaml, or the YAML)")
    c.add_argument("--from", dest="from_", choices=_FORMATS + ("synth",), required=True)
    c.add_argument("--to", choices=_FORMATS, required=True)
    c.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    c.add_argument("--split", action="append", default=[], choices=("train", "val", "test"),
                   help="only this split (repeatable; default: every split present, or those of --split-file)")
    c.add_argument("--split-file", action="append", default=[], metavar="NAME=FILE",
                   help="split NAME (train, val, test) is the image ids listed in FILE, one a line (KITTI "
                   "ImageSets style; kitti, synth and voc sources; FILE relative to here or to SRC); repeatable. "
                   "A partial KITTI copy converts without --skip-bad: images not listed are left out, a listed "
                   "id without its image is an error")
    c.add_argument("--skip-bad", action="store_true", help="skip bad annotations/images (counted, logged) instead "
                   "of stopping at the first")
    c.add_argument("--drop-ignore", action="store_true", help="drop ignore regions (DontCare/crowd) with a count")
    c.set_defaults(func=_cmd_convert)
    st = sub.add_parser("stats", help="images, boxes per class, box-size histogram (PNG)",
                        description="Count images and boxes per class and split; with --png, plot box sizes "
                        "(sqrt of area). Writes nothing unless --png or --json is given.")
    st.add_argument("dir", type=Path)
    st.add_argument("--format", choices=_FORMATS + ("synth",), required=True)
    st.add_argument("--png", type=Path, default=None, help="also write the box-size histogram to this PNG")
    st.add_argument("--json", type=Path, default=None, help="also write the counts as JSON")
    st.add_argument("--split", action="append", default=[], choices=("train", "val", "test"))
    st.add_argument("--skip-bad", action="store_true")
    st.set_defaults(func=_cmd_stats)
    k = sub.add_parser("kitti", help="check a KITTI download (sha256 of all 7,481 training images and labels)",
                       description="Compare ROOT/training/image_2/*.png and label_2/*.txt with the sha256 of the "
                       "original KITTI object training set (shipped with compressdet); report missing and corrupt "
                       "files. Only when every file matches, write the MSCNN train/val split to ROOT/ImageSets/ "
                       "where absent (never when a file is missing or corrupt: a failed check changes nothing). "
                       "Exit 2 when any file is missing or corrupt.")
    k.add_argument("--verify", type=Path, metavar="ROOT", required=True)
    k.add_argument("--no-split", action="store_true",
                   help="do not write ImageSets/{train,val}.txt, even when every file matches")
    k.add_argument("--show", type=int, default=20, help="list at most N missing/corrupt files of each kind")
    k.add_argument("--progress", action="store_true", help="print progress while hashing")
    k.set_defaults(func=_cmd_kitti)
