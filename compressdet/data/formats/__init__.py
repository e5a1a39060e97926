"""Data formats behind one reader contract: ``data.format`` names a registered reader.

Every reader turns a split into :class:`ImageRecord` s (image path, (H, W), xyxy pixel boxes,
source category names, ignore/crowd flags, where each box came from) and every writer takes them
back to files, so any two formats convert through the record. Bad data (a box outside the image or
with non-positive size, an unknown category id, a label without an image, an unreadable image) is
a :class:`~compressdet.errors.DataError` naming the file and line/annotation, or with
``data.skip_bad`` a counted, logged skip (:class:`Issues`).

Example:
    >>> from compressdet.data.formats import read_records, source_config
    >>> recs, categories, source = read_records(source_config("coco", "my_coco"), "val")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from ...errors import DataError, UserError
from . import coco, kitti, voc, yolo
from ._common import BOX_TOLERANCE, ClassMapper, ImageRecord, Issues, class_problems

__all__ = ["ImageRecord", "Issues", "ClassMapper", "class_problems", "FormatSpec", "register_format", "get_format",
           "list_formats", "read_records", "source_config", "BOX_TOLERANCE"]


@dataclass(frozen=True)
class FormatSpec:
    """A registered format: ``read(cfg, split, issues) -> (records, declared categories | None, source)``,
    ``write(out, {split: records}, categories, issues) -> counts``, ``available_splits(cfg) -> [split]``."""

    name: str
    read: Callable[..., tuple[list[ImageRecord], list[str] | None, str]]
    write: Callable[..., dict]
    available_splits: Callable[[Any], list[str]]
    description: str = ""
    #: ``(cfg, split, wanted) -> (category names, source) | None``: the names a split's annotations use,
    #: read without opening images (``recipe check`` compares them with data.classes / class_map)
    categories: Callable[..., tuple[list[str], str] | None] | None = None


_FORMATS: dict[str, FormatSpec] = {}


def register_format(name: str, module: ModuleType, description: str = "") -> FormatSpec:
    """Register ``module`` (with ``read``, ``write``, ``available_splits``) as format ``name``."""
    if name in _FORMATS:
        raise ValueError(f"data format '{name}' is already registered")
    spec = FormatSpec(name, module.read, module.write, module.available_splits, description,
                      getattr(module, "category_names", None))
    _FORMATS[name] = spec
    return spec


def get_format(name: str) -> FormatSpec:
    if name not in _FORMATS:
        raise UserError(f"unknown data format '{name}' (one of {', '.join(list_formats())})")
    return _FORMATS[name]


def list_formats() -> list[str]:
    return sorted(_FORMATS)


register_format("kitti", kitti, "training/image_2 + label_2, ImageSets/<split>.txt")
register_format("synth", kitti, "SynthKITTI (KITTI layout, generated on first use)")
register_format("coco", coco, "annotations/<split>.json + images/")
register_format("yolo", yolo, "Ultralytics data.yaml + images/<split>, labels/<split>")
register_format("voc", voc, "Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt")


def source_config(fmt: str, root: str | Path, **data: Any):
    """A :class:`~compressdet.recipe.DataConfig` reading ``root`` laid out as ``fmt`` writes it (a
    SynthKITTI folder, ``synth``, is read as the KITTI folder it is)."""
    from ...recipe import DataConfig

    get_format(fmt)
    default = DataConfig()
    fields = {k: getattr(default, k) for k in DataConfig.model_fields}
    return DataConfig.model_construct(**{**fields, "format": "kitti" if fmt == "synth" else fmt, "root": str(root),
                                         **data})


def read_records(cfg: Any, split: str, *, issues: Issues | None = None, max_images: int | None = None
                 ) -> tuple[list[ImageRecord], list[str] | None, str]:
    """Records of ``split`` ("train" | "val" | "test") of ``cfg`` (a DataConfig), first ``max_images``.

    Raises:
        DataError: bad data (unless ``cfg.skip_bad`` / ``issues.skip_bad``), a missing split.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    issues = issues or Issues(getattr(cfg, "skip_bad", False))
    before = issues.counts.copy()  # a shared Issues counts over several splits: log this split's own
    recs, cats, source = get_format(cfg.format).read(cfg, split, issues)
    mine = issues.counts - before
    if mine:
        import logging

        logging.getLogger("compressdet.data").warning(
            f"{source}: skipped {', '.join(f'{n} {k}' for k, n in sorted(mine.items()))} (data.skip_bad)")
    if max_images:
        recs = recs[:max_images]
    ids = [r.image_id for r in recs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise DataError(f"{source}: image ids repeat in the {split} split ({', '.join(dup)})")
    return recs, cats, source
