"""``compressdet viz``: PNGs of detections, a model's distillation mask, PR curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..conventions import KITTI_CLASSES
from ._args import split_ids

__all__ = ["register"]


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
    from ..eval.inputs import load_kitti_dirs
    from ..eval.viz import draw_detections

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is a file; viz dets writes one PNG per image into a folder")
    ids = split_ids(args.ids)
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
    from ..eval.viz import draw_mask
    from ..models import build_model

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
    from ..eval.inputs import load_kitti_dirs
    from ..eval.kitti_eval import evaluate_kitti
    from ..eval.viz import plot_pr_curves

    gt, dets, _ = load_kitti_dirs(args.gt, args.det, split_ids(args.ids))
    fig = plot_pr_curves(evaluate_kitti(gt, dets, protocol=args.protocol, return_curves=True))
    out = png_path(args.out)
    atomic_save_figure(fig, out)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
