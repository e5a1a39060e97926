"""``data kitti --verify``: check a KITTI download against the sha256 of the 7,481 original
training images and label files (package data ``kitti_sha256/``); write the MSCNN split if absent, and only
when every file matched: a check never changes the folder it finds broken."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any, Callable

__all__ = ["load_checksums", "verify_kitti", "KITTI_HOWTO"]

#: what every "KITTI not found" message tells the user
KITTI_HOWTO = ("download 'left color images of object data set' (12 GB) and 'training labels of object data set' "
               "from https://www.cvlibs.net/datasets/kitti/eval_object.php, unzip both into ROOT (giving "
               "ROOT/training/image_2 and ROOT/training/label_2), then check it with "
               "'compressdet data kitti --verify ROOT' (it also writes the MSCNN train/val split)")

_TABLES = {"image_2": "kitti_training_image_2_sha256.tsv", "label_2": "kitti_training_label_2_sha256.tsv"}


def load_checksums(kind: str) -> dict[str, tuple[str, int]]:
    """``{file name: (sha256, bytes)}`` of the originals, ``kind`` in ``image_2`` | ``label_2``."""
    text = resources.files("compressdet.data").joinpath("kitti_sha256", _TABLES[kind]).read_text()
    lines = text.splitlines()
    head = lines[0].split("\t")
    i_f, i_s, i_b = head.index("file"), head.index("sha256"), head.index("bytes")
    out = {}
    for ln in lines[1:]:
        if ln.strip():
            t = ln.split("\t")
            out[t[i_f]] = (t[i_s], int(t[i_b]))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_kitti(root: str | Path, *, write_split: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Check ``root/training/{image_2,label_2}`` file by file.

    ``write_split``: write the MSCNN ``ImageSets/{train,val}.txt`` where absent, only when no file is
    missing or corrupt (a failed check leaves the folder as it was).

    Returns:
        ``{"root", "checked", "ok", "missing": [rel paths], "corrupt": [rel paths], "extra": count,
        "split_written": [paths]}``; a file is corrupt when its size or sha256 differs.
    """
    root = Path(root)
    rep: dict[str, Any] = {"root": str(root), "checked": 0, "ok": 0, "missing": [], "corrupt": [], "extra": 0,
                           "split_written": []}
    tables = {k: load_checksums(k) for k in _TABLES}
    total, done = sum(len(t) for t in tables.values()), 0
    for kind, table in tables.items():
        folder = root / "training" / kind
        for name, (sha, size) in table.items():
            p = folder / name
            rel = f"training/{kind}/{name}"
            rep["checked"] += 1
            if not p.is_file():
                rep["missing"].append(rel)
            elif p.stat().st_size != size or _sha256(p) != sha:
                rep["corrupt"].append(rel)
            else:
                rep["ok"] += 1
            done += 1
            if progress is not None:
                progress(done, total)
        if folder.is_dir():
            rep["extra"] += sum(1 for q in folder.iterdir() if q.name not in table)
    if write_split and not rep["missing"] and not rep["corrupt"]:
        from .._io import atomic_write_text

        for split in ("train", "val"):
            p = root / "ImageSets" / f"{split}.txt"
            if not p.exists():
                ids = resources.files("compressdet.data").joinpath("kitti_sha256", f"mscnn_{split}.txt").read_text()
                atomic_write_text(p, ids if ids.endswith("\n") else ids + "\n")
                rep["split_written"].append(str(p))
    return rep
