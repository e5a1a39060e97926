"""``compressdet eval`` (KITTI AP of a result folder, or COCO AP of a result JSON) and ``compressdet viz`` (PNGs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..conventions import KITTI_CLASSES
from ..errors import DataError

__all__ = ["register", "load_kitti_dirs"]


def load_kitti_dirs(gt_dir: Path, det_dir: Path | None, ids: list[str] | None) -> tuple[dict, dict | None, list[str]]:
    """Read label files and result files; every id needs both (a missing one is an error naming it)."""
    from ..data.kitti import read_label_file

    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DataError(f"{gt_dir}: ground-truth label folder not found")
    if ids is None:
        ids = sorted(p.stem for p in gt_dir.glob("*.txt"))
        if not ids:
            raise DataError(f"{gt_dir}: no label .txt files")
    gt = {k: read_label_file(gt_dir / f"{k}.txt") for k in ids}
    dets = None
    if det_dir is not None:
        det_dir = Path(det_dir)
        if not det_dir.is_dir():
            raise DataError(f"{det_dir}: result folder not found")
        dets = {}
        for k in ids:
            p = det_dir / f"{k}.txt"
            if not p.is_file():
                raise DataError(f"{p}: result file missing (every image needs one, empty if nothing was detected)")
            try:
                dets[k] = read_label_file(p)
            except DataError:
                _refuse_other_classes(p)  # the clearer line when the file holds a model's own class names
                raise
            for i, o in enumerate(dets[k], 1):
                if o.score is None:
                    raise DataError(f"{p}: detection {i} has no score (16th field)")
    return gt, dets, ids


def _refuse_other_classes(path: Path) -> None:
    """Raise a UserError when a result file holds a type that is not KITTI's (a model's own classes, written
    by predict as given): the KITTI protocol is defined per KITTI class (IoU 0.7 for cars, 0.5 for
    pedestrians and cyclists, vans and sitting persons as ignored neighbours), so they are scored with
    COCO AP instead."""
    from ..data.kitti import KITTI_TYPES
    from ..errors import UserError

    for i, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        tok = line.split()
        if tok and tok[0] not in KITTI_TYPES:
            raise UserError(f"{path}:{i}: detection type '{tok[0]}' is not a KITTI class; the KITTI protocol scores "
                            "Car, Pedestrian, Cyclist only: score other classes with --format coco "
                            "(compressdet predict --save-txt coco)")


def _ids(path: Path | None) -> list[str] | None:
    from ..data.kitti import read_split

    return read_split(path) if path else None


def load_coco_pair(gt_path: Path, det_path: Path, notes: list[str] | None = None) -> tuple[dict, list[dict]]:
    """A COCO ground-truth JSON and a COCO result JSON, checked and lined up with the ground truth.

    The result file is a list ``[{image_id, category_id, bbox, score}]`` (ids must be the ground
    truth's), or an object with ``annotations`` (that list) and, as ``compressdet predict --save-txt
    coco`` writes, its own ``images`` (``file_name``) and ``categories`` (``name``): then images are
    matched by file name (:class:`~compressdet.eval.coco_eval.ImageMatcher`) and categories by name,
    case-insensitively, and the detections rewritten to the ground truth's ids, so ids numbered
    elsewhere cannot silently score 0.

    Args:
        notes: gets one line per thing worth telling (ids rewritten, ground-truth images without an entry).

    Raises:
        DataError: malformed files; UserError: a detection category that means another name in the ground
        truth (one line naming both) or has no category there, an image not in the ground truth.
    """
    from ..data.formats.coco import load_json
    from ..errors import UserError
    from .coco_eval import ImageMatcher, category_ids_by_name

    notes = notes if notes is not None else []
    gt = load_json(gt_path)
    try:
        raw = json.loads(Path(det_path).read_text())
    except FileNotFoundError:
        raise DataError(f"{det_path}: detection file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{det_path}: not valid JSON ({e})") from None
    dets = raw.get("annotations") if isinstance(raw, dict) else raw
    if not isinstance(dets, list):
        raise DataError(f"{det_path}: expected a COCO result list [{{image_id, category_id, bbox, score}}, ...]")
    from ._coco_input import check_coco_values

    check_coco_values(gt, dets, gt_path, det_path,  # ids, finite boxes and scores (JSON allows NaN / Infinity)
                      own=raw if isinstance(raw, dict) else None)
    images = {im.get("id") for im in gt["images"]}
    gt_names = {c.get("id"): str(c.get("name", "")) for c in gt["categories"]}
    for n, d in enumerate(dets):
        where = f"{det_path}: detection {n}"
        if not isinstance(d, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(d):
            raise DataError(f"{where}: expected keys image_id, category_id, bbox [x, y, w, h], score")
        if not (isinstance(d["bbox"], list) and len(d["bbox"]) == 4):
            raise DataError(f"{where}: bbox must be [x, y, w, h], got {d['bbox']!r}")
    for a in gt.get("annotations", []):
        if a.get("category_id") not in gt_names:
            raise DataError(f"{gt_path}: annotation id {a.get('id')}: category_id {a.get('category_id')} is not in "
                            "'categories'")
    own_images = raw.get("images") if isinstance(raw, dict) else None
    own_cats = raw.get("categories") if isinstance(raw, dict) else None
    # categories: by name when the detections name theirs
    cat_map: dict = {}
    det_names = {c.get("id"): str(c.get("name", "")) for c in own_cats or [] if isinstance(c, dict)}
    used = sorted({d["category_id"] for d in dets}, key=str)
    if det_names and any(det_names.values()):
        by_name = category_ids_by_name(gt, str(gt_path))
        for cid in used:
            if cid not in det_names:
                raise DataError(f"{det_path}: category_id {cid} of a detection is not in its own 'categories'")
            name = det_names[cid]
            gid = by_name.get(name.strip().lower())
            if gid is None:
                if cid in gt_names:
                    raise UserError(f"{det_path}: category_id {cid} is '{name}' in the detections but "
                                    f"'{gt_names[cid]}' in {gt_path}, which has no category '{name}' "
                                    f"(categories: {', '.join(gt_names.values())})")
                raise UserError(f"{det_path}: category '{name}' (id {cid}) is not a category of {gt_path} "
                                f"(categories: {', '.join(gt_names.values())})")
            cat_map[cid] = gid
        moved = [f"{k}->{v}" for k, v in cat_map.items() if k != v]
        if moved:
            notes.append(f"categories matched by name, ids rewritten to {Path(gt_path).name}'s: {', '.join(moved)}")
    else:
        for n, d in enumerate(dets):
            if d["category_id"] not in gt_names:
                raise UserError(f"{det_path}: detection {n}: category_id {d['category_id']} is not in the categories "
                                f"of {gt_path} (ids {', '.join(map(str, gt_names))})")
    # images: by file name when the detections name theirs
    img_map: dict = {}
    named = [im for im in own_images or [] if isinstance(im, dict) and im.get("file_name")]
    if named:
        matcher = ImageMatcher(gt, str(gt_path))
        with_dets = {d["image_id"] for d in dets}
        for im in named:
            gid = matcher.match(str(im["file_name"]))
            if gid is None:
                if im.get("id") in with_dets:
                    raise UserError(f"{det_path}: image '{im['file_name']}' (id {im.get('id')}) is not in {gt_path} "
                                    "(matched by path, path tail, then base name)")
                continue
            img_map[im.get("id")] = gid
        moved = sum(1 for k, v in img_map.items() if k != v)
        if moved:
            notes.append(f"{len(img_map)} images matched by file name, {moved} image ids rewritten to "
                         f"{Path(gt_path).name}'s")
        missing = len(images - set(img_map.values()))
        if missing:
            notes.append(f"{missing} of {len(images)} images of {gt_path} have no entry in {det_path} "
                         "(scored as images without detections)")
    out = []
    for n, d in enumerate(dets):
        iid = img_map.get(d["image_id"], d["image_id"]) if named else d["image_id"]
        if named and d["image_id"] not in img_map:
            raise DataError(f"{det_path}: detection {n}: image_id {d['image_id']} is not in its own 'images'")
        if iid not in images:
            raise UserError(f"{det_path}: detection {n}: image_id {d['image_id']} is not in {gt_path}")
        out.append({**d, "image_id": iid, "category_id": cat_map.get(d["category_id"], d["category_id"])})
    return gt, out


def _cmd_eval_coco(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json
    from .coco_eval import evaluate_coco_json

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
    from .kitti_eval import evaluate_kitti
    from .table import format_table

    if args.format == "coco":
        return _cmd_eval_coco(args)
    gt, dets, ids = load_kitti_dirs(args.gt, args.det, _ids(args.ids))
    res = {**evaluate_kitti(gt, dets, protocol=args.protocol), "ap_unit": "percent"}
    name = args.name or Path(args.det).name
    print(f"KITTI 2D AP in %, {len(ids)} images, protocol {args.protocol}")
    print(format_table([res, res], models=[f"{name} AP40", f"{name} AP11"], metrics=["ap40", "ap11"]), end="")
    print(f"mAP40 {res['map40']:.2f}  mAP11 {res['map11']:.2f}")
    if args.json:
        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def _save_png(arr, path: Path) -> None:
    from PIL import Image

    from .._io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def png_path(path: Path) -> Path:
    """``--out`` of a command that writes one PNG: the path, ``.png`` added when it has another ending
    (``--out pr`` writes ``pr.png``, which an image viewer opens)."""
    path = Path(path)
    return path if path.suffix.lower() == ".png" else path.with_name(path.name + ".png")


def _load_image(path: Path):
    from ..data.images import decode_rgb

    return decode_rgb(path)  # DataError naming the file: missing, truncated or not an image


def _cmd_viz_dets(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from .viz import draw_detections

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is a file; viz dets writes one PNG per image into a folder")
    ids = _ids(args.ids)
    gt, dets, ids = load_kitti_dirs(args.gt, args.det, ids)
    if args.limit:
        ids = ids[: args.limit]
    for k in ids:
        img = draw_detections(_load_image(args.image_dir / f"{k}.png"), gt[k], dets[k] if dets else (),
                              score_thresh=args.score_thresh)
        _save_png(img, args.out / f"{k}.png")
    print(f"wrote {len(ids)} images to {args.out}")
    return 0


def _cmd_viz_mask(args: argparse.Namespace) -> int:
    import torch

    from ..data.kitti import read_label_file
    from ..errors import UserError
    from ..models import build_model
    from .viz import draw_mask

    image = _load_image(args.image)
    h, w = args.size
    objs = [o for o in read_label_file(args.label) if o.type.lower() in KITTI_CLASSES]
    sy, sx = h / image.shape[0], w / image.shape[1]
    boxes = torch.tensor([[o.bbox[0] * sx, o.bbox[1] * sy, o.bbox[2] * sx, o.bbox[3] * sy] for o in objs],
                         dtype=torch.float32).reshape(-1, 4)
    # the model's own distillation mask (detector contract): FGFI's anchor mask for ShuffleDet and
    # RetinaNet, the GT-box / centre-region mask for FCOS; one level of an FPN family
    model = build_model(args.arch, image_size=(h, w))
    masks = model.distill_mask([boxes], None, args.psi)
    if not 0 <= args.level < len(masks):
        raise UserError(f"--level {args.level}: {args.arch} has levels 0..{len(masks) - 1}")
    mask = masks[args.level][0]
    out = png_path(args.out)
    _save_png(draw_mask(image, mask), out)
    print(f"wrote {out} ({args.arch} level {args.level}: {int(mask.sum())} of {mask.numel()} cells masked)")
    return 0


def _cmd_viz_pr(args: argparse.Namespace) -> int:
    from .._io import atomic_save_figure
    from .kitti_eval import evaluate_kitti
    from .viz import plot_pr_curves

    gt, dets, _ = load_kitti_dirs(args.gt, args.det, _ids(args.ids))
    fig = plot_pr_curves(evaluate_kitti(gt, dets, protocol=args.protocol, return_curves=True))
    out = png_path(args.out)
    atomic_save_figure(fig, out)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
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

    v = sub.add_parser("viz", help="PNGs: detections, imitation mask, PR curves")
    vs = v.add_subparsers(dest="viz_command", metavar="ACTION")
    d = vs.add_parser("dets", help="draw GT (with difficulty) and detections (with scores) on images")
    d.add_argument("--image-dir", type=Path, required=True, help="folder of the images, <id>.png")
    d.add_argument("--gt", type=Path, required=True, help="label_2 folder: KITTI ground truth, <id>.txt")
    d.add_argument("--det", type=Path, default=None,
                   help="result folder: KITTI detections with scores, <id>.txt (default: ground truth only)")
    d.add_argument("--ids", type=Path, default=None, help="split file, one id a line (default: every label file)")
    d.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder, created if missing: one <id>.png per image")
    d.add_argument("--score-thresh", type=float, default=0.3, help="detections below it are not drawn (default 0.3)")
    d.add_argument("--limit", type=int, default=0, help="only the first N images (default 0: all)")
    d.set_defaults(func=_cmd_viz_dets)
    m = vs.add_parser("mask", help="a model's distillation mask (FGFI, METHOD.md section 3) as a heat map")
    m.add_argument("--image", type=Path, required=True, help="an image file")
    m.add_argument("--label", type=Path, required=True, help="its KITTI label file (the boxes the mask is made from)")
    m.add_argument("--size", type=int, nargs=2, default=(384, 1248), metavar=("H", "W"),
                   help="model input size the mask is computed at (default 384 1248)")
    m.add_argument("--psi", type=float, default=0.5, help="FGFI's threshold factor psi (default 0.5)")
    m.add_argument("--arch", default="shuffledet_0.25x",
                   help="registered model whose distillation mask is drawn (its priors; e.g. fcos_mnv3_small)")
    m.add_argument("--level", type=int, default=0, help="feature level of an FPN family (0: the finest)")
    m.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="output PNG file (.png added when it has another ending)")
    m.set_defaults(func=_cmd_viz_mask)
    p = vs.add_parser("pr", help="per-class precision/recall curves")
    p.add_argument("--gt", type=Path, required=True, help="label_2 folder: KITTI ground truth, <id>.txt")
    p.add_argument("--det", type=Path, required=True, help="result folder: KITTI detections with scores, <id>.txt")
    p.add_argument("--ids", type=Path, default=None, help="split file, one id a line (default: every label file)")
    p.add_argument("--protocol", choices=("official", "seed"), default="official",
                   help="official devkit (short detections ignored) or the seed's old copy (default official)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="output PNG file (.png added when it has another ending)")
    p.set_defaults(func=_cmd_viz_pr)
    v.set_defaults(func=lambda a: (v.print_help(), 2)[1])
