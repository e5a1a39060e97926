"""Writers' helpers: atomic image copies and file-safe ids."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..._io import atomic_path

__all__ = ["copy_image", "safe_ids", "fmt_num"]


def copy_image(src: Path, dst: Path, *, png: bool = False) -> None:
    """Copy ``src`` to ``dst`` atomically (re-encoded as PNG when ``png`` and the source is not one)."""
    if png and Path(src).suffix.lower() != ".png":
        from PIL import Image

        from ..images import decode_rgb

        with atomic_path(dst, suffix=".png") as tmp:
            Image.fromarray(decode_rgb(src)).save(tmp, format="PNG")
        return
    with atomic_path(dst, suffix=Path(dst).suffix) as tmp:
        shutil.copyfile(src, tmp)


def safe_ids(recs: list, *, alnum: bool = False) -> list[str]:
    """File names for the records' ids: unsafe characters removed (``alnum``: all but letters and digits,
    else replaced by ``_``); a running ``000000`` number when that leaves an empty or repeated name."""
    bad = re.compile(r"[^A-Za-z0-9]" if alnum else r"[^A-Za-z0-9_.-]")
    ids = [bad.sub("" if alnum else "_", r.image_id) for r in recs]
    if all(ids) and len(set(ids)) == len(ids):
        return ids
    return [f"{n:06d}" for n in range(len(recs))]


def fmt_num(v: float) -> str:
    """Shortest text of ``v`` that reads back within 1e-6 (box coordinates in files)."""
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s
