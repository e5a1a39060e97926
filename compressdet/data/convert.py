"""``data convert`` (any format -> any format, through :class:`~compressdet.data.formats.ImageRecord`)
and ``data stats`` (images, boxes per class, box-size histogram PNG)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from .formats import ImageRecord, Issues, get_format, read_records, source_config
from .kitti import KITTI_TYPES

__all__ = ["open_source", "read_all_splits", "with_split_files", "convert", "stats", "plot_size_histogram",
           "ALL_SPLIT_FILE"]


def open_source(src: str | Path, fmt: str, *, skip_bad: bool = False):
    """The DataConfig reading ``src`` as ``fmt`` (for yolo, ``src`` may be the dataset YAML itself)."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such folder")
    if fmt == "yolo" and src.is_file():
        return source_config(fmt, src.parent, yolo=src.name, skip_bad=skip_bad)
    if not src.is_dir():
        raise UserError(f"{src}: expected a folder laid out as '{fmt}' data")
    return source_config(fmt, src, skip_bad=skip_bad)


def read_all_splits(cfg, issues: Issues, splits: list[str] | None = None
                    ) -> tuple[dict[str, list[ImageRecord]], list[str]]:
    """({split: records} of every split present, the union of categories in a stable order)."""
    spec = get_format(cfg.format)
    present = spec.available_splits(cfg)
    splits = [s for s in (splits or present)]
    missing = [s for s in splits if s not in present]
    if missing or not splits:
        raise UserError(f"{cfg.root}: no {'/'.join(missing) or 'train/val/test'} split found for format "
                        f"'{cfg.format}' (present: {', '.join(present) or 'none'})")
    out, cats = {}, []
    for s in splits:
        recs, declared, _ = read_records(cfg, s, issues=issues)
        out[s] = recs
        for c in (declared or []):
            if c not in cats:
                cats.append(c)
        for r in recs:
            for n in r.names:
                if n not in cats:
                    cats.append(n)
    if cfg.format in ("kitti", "synth"):  # KITTI's own order
        cats = [t for t in KITTI_TYPES if t in cats]
    return out, cats


#: where each writer lists every converted image (all splits, in order), beside the per-split files
ALL_SPLIT_FILE = {"coco": "annotations/all.json (a COCO file of every split's images)",
                  "yolo": "all.txt (an Ultralytics image list, paths relative to it)",
                  "voc": "ImageSets/Main/all.txt", "kitti": "ImageSets/all.txt"}


def with_split_files(cfg, split_files: dict[str, str | Path], *, check: bool = True):
    """``cfg`` (a kitti or voc source) reading each split's image ids from the given list file.

    A relative file is taken from the working directory, else from the source root. ``check``: every
    listed id must have its image (kitti) or annotation (voc) in the source (a DataError naming the
    file and line otherwise); images present but not listed are left out.
    """
    from ..errors import DataError
    from ..recipe import SplitFiles
    from .kitti import read_split

    if cfg.format not in ("kitti", "voc"):
        what = {"coco": "its annotation JSON files", "yolo": "the dataset YAML's entries"}.get(cfg.format, "its own")
        raise UserError(f"--split-file: lists of image ids split kitti, synth and voc data; {cfg.format} data is "
                        f"split by {what}")
    root = Path(cfg.root)
    paths = {}
    for split, f in split_files.items():
        if split not in ("train", "val", "test"):
            raise UserError(f"--split-file {split}={f}: the split name must be train, val or test")
        p = Path(f).expanduser()
        p = p if p.is_file() or p.is_absolute() else root / p
        if not p.is_file():
            raise UserError(f"--split-file {split}={f}: no such file (here or under {root})")
        paths[split] = p.resolve()
        if not check:
            continue
        for n, i in enumerate(read_split(p), 1):
            need = (root / "training" / "image_2" / f"{i}.png" if cfg.format == "kitti"
                    else root / "Annotations" / f"{i}.xml")
            if not need.is_file():
                raise DataError(f"{p}:{n}: image id '{i}' is listed but {need} does not exist (list only the "
                                "images the source holds, or pass --skip-bad to skip missing ones)")
    if cfg.format == "kitti":
        return cfg.model_copy(update={f"{s}_split": str(p) for s, p in paths.items()})
    return cfg.model_copy(update={"voc": SplitFiles(**{s: str(p) for s, p in paths.items()})})


def _drop_dontcare(data: dict[str, list[ImageRecord]], cats: list[str]) -> int:
    """Remove KITTI DontCare ignore regions (in place) and, once none is left, the category; the count."""
    n = 0
    for recs in data.values():
        for r in recs:
            keep = ~((np.asarray(r.names, object) == "DontCare") & r.crowd) if len(r) else np.ones(0, bool)
            n += int((~keep).sum())
            r.boxes, r.crowd = r.boxes[keep], r.crowd[keep]
            r.names = [x for x, k in zip(r.names, keep) if k]
            r.refs = [x for x, k in zip(r.refs, keep) if k] if r.refs else r.refs
            r.kitti = [o for o, k in zip(r.kitti, keep) if k] if r.kitti is not None else None
    if not any("DontCare" in r.names for recs in data.values() for r in recs):
        cats.remove("DontCare")
    return n


def convert(src: str | Path, *, src_format: str, dst_format: str, out: str | Path, skip_bad: bool = False,
            drop_ignore: bool = False, splits: list[str] | None = None,
            split_files: dict[str, str | Path] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert the data set at ``src`` to ``dst_format`` under ``out`` (a new or empty folder).

    Every image is decoded whole and every annotation checked before anything is written; the output
    is written into a temporary folder beside ``out`` and renamed at the end, so bad data (without
    ``skip_bad``) leaves nothing, and with ``skip_bad`` every written image has its labels and split entry.

    Ignore regions (KITTI DontCare, COCO iscrowd, VOC difficult) are kept where the target format
    has them (COCO ``iscrowd: 1``, VOC ``difficult``, KITTI DontCare) and dropped with a count for
    YOLO or with ``drop_ignore``. KITTI's DontCare is no class: YOLO and VOC output (whose tools
    take every name as a class) leave its regions and its category out, counted as dropped.

    ``split_files`` (``{split: file of image ids}``, kitti/synth/voc sources) replaces the source's
    split lists, so a partial copy converts the images it has; an id listed without its image or
    annotation is a DataError (unless ``skip_bad``). The writers also write every split's images
    as one more listing (see :data:`ALL_SPLIT_FILE`).

    Returns:
        ``{"splits": {split: images}, "images", "boxes", "categories", "dropped_ignore_regions",
        "skipped": {kind: count}}``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: the output folder exists and is not empty")
    issues = Issues(skip_bad, logger=lambda m: log(m))
    cfg = open_source(src, src_format, skip_bad=skip_bad)
    if split_files:
        cfg = with_split_files(cfg, split_files, check=not skip_bad)
        splits = splits or list(split_files)
    data, cats = read_all_splits(cfg, issues, splits)
    dropped = 0
    if drop_ignore:
        for recs in data.values():
            for r in recs:
                keep = ~r.crowd
                dropped += int((~keep).sum())
                r.boxes, r.crowd = r.boxes[keep], r.crowd[keep]
                r.names = [n for n, k in zip(r.names, keep) if k]
                r.refs = [n for n, k in zip(r.refs, keep) if k] if r.refs else r.refs
                r.kitti = [o for o, k in zip(r.kitti, keep) if k] if r.kitti is not None else None
        used = {n for recs in data.values() for r in recs for n in r.names}
        if src_format in ("kitti", "synth", "voc"):  # categories seen, not declared: drop the unused
            cats = [c for c in cats if c in used]
    if dst_format in ("yolo", "voc") and "DontCare" in cats:
        dropped += _drop_dontcare(data, cats)
    from .._io import atomic_dir

    with atomic_dir(out) as tmp:  # every image was decoded above; a writer that stops leaves no half set
        counts = get_format(dst_format).write(tmp, data, cats, issues)
    dropped += counts.pop("dropped_ignore_regions", 0)
    rep = {"splits": {s: len(r) for s, r in data.items()}, "images": counts["images"], "boxes": counts["boxes"],
           "categories": cats, "dropped_ignore_regions": dropped, "skipped": dict(issues.counts)}
    return rep


def stats(cfg, issues: Issues, splits: list[str] | None = None) -> dict[str, Any]:
    """Per split: images, boxes per category, ignore regions, box sizes (sqrt of area, px) and image sizes."""
    data, cats = read_all_splits(cfg, issues, splits)
    out: dict[str, Any] = {"format": cfg.format, "root": str(cfg.root), "categories": cats, "splits": {},
                           "skipped": dict(issues.counts)}
    for s, recs in data.items():
        per = Counter()
        ign = 0
        sizes: dict[str, list[float]] = {}
        for r in recs:
            for b, n, c in zip(r.boxes, r.names, r.crowd):
                if c:
                    ign += 1
                    continue
                per[n] += 1
                sizes.setdefault(n, []).append(float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))))
        out["splits"][s] = {"images": len(recs), "boxes": int(sum(per.values())), "ignore_regions": ign,
                            "boxes_per_class": {c: per[c] for c in cats if per[c]},
                            "image_sizes": {f"{w}x{h}": n for (h, w), n in Counter(r.size for r in recs).most_common()},
                            "box_sizes": sizes}
    return out


def plot_size_histogram(st: dict[str, Any], path: str | Path) -> Path:
    """PNG: box size (sqrt of area, px, log bins) per class, all splits; COCO small/medium/large borders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_save_figure

    per: dict[str, list[float]] = {}
    for sp in st["splits"].values():
        for c, v in sp["box_sizes"].items():
            per.setdefault(c, []).extend(v)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    allv = [x for v in per.values() for x in v]
    if allv:
        bins = np.geomspace(max(1.0, min(allv)), max(allv) * 1.01 + 1, 30)
        ax.hist([per[c] for c in per], bins=bins, stacked=True, label=[f"{c} ({len(per[c])})" for c in per])
        ax.set_xscale("log")
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

        ax.xaxis.set_major_locator(FixedLocator([t for t in (4, 8, 16, 32, 64, 96, 128, 256, 512, 1024, 2048)
                                                 if bins[0] / 1.5 <= t <= bins[-1] * 1.5]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for x, name in ((32, "small | medium"), (96, "medium | large")):
            ax.axvline(x, color="k", ls="--", lw=0.8)
            ax.text(x, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
        ax.legend(fontsize=8)
    n_img = sum(sp["images"] for sp in st["splits"].values())
    ax.set_xlabel("box size: sqrt(w x h), pixels (log scale)")
    ax.set_ylabel("boxes")
    ax.set_title(f"{st['root']} ({st['format']}): {n_img} images, {len(allv)} boxes")
    fig.tight_layout()
    return atomic_save_figure(fig, path)
