"""Option values shared by several commands (and the benchmark scripts): each a UserError naming the flag."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

__all__ = ["parse_size", "parse_ints", "split_ids"]


def parse_size(text: str, flag: str = "--image-size") -> tuple[int, int]:
    """``"384x1248"`` -> (384, 1248); both multiples of 16 (the models' stride); errors name ``flag``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected HxW, e.g. 384x1248") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise UserError(f"{flag} {text}: both sides must be positive multiples of 16")
    return h, w


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,8") from None
    if not vals or min(vals) <= 0:
        raise UserError(f"{flag} {text!r}: expected positive integers")
    return vals


def split_ids(path: Path | None) -> list[str] | None:
    """``--ids FILE``: the image ids of a KITTI split file, one a line (None: every label file)."""
    from ..data.kitti import read_split

    return read_split(path) if path else None
