"""Trained models shipped with the package, addressed as ``asset:<name>``.

Why: a first run should show what compressdet does for a detector that already detects, and
training a teacher from scratch takes the better part of an hour on a laptop CPU. The files here
were produced by this project's own benchmark on SynthKITTI (``CARD.md`` beside them says how, with
which command, and what they score on the held-out test split); nothing is downloaded.

Weights are stored in float16 (half the bytes; :func:`compressdet.models.load_model` casts them
back to float32, and the card reports the test mAP of the float16 file itself).

Example recipe stage::

    - {name: teacher, kind: model_file, path: "asset:shuffledet_1x_synthkitti"}
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

__all__ = ["ASSETS", "ASSET_PREFIX", "asset_path", "resolve_model_path", "asset_note", "REAL_KITTI_MAP40"]

ASSET_PREFIX = "asset:"
_HERE = Path(__file__).resolve().parent

#: name -> (file in this folder, what it is)
ASSETS: dict[str, tuple[str, str]] = {
    "shuffledet_1x_synthkitti": ("shuffledet_1x_synthkitti.fp16.pt",
                                 "1x ShuffleDet teacher, SynthKITTI 192x624 (imitation benchmark, cpu preset)"),
    "shuffledet_0.25x_imitated_synthkitti": ("shuffledet_0.25x_imitated_synthkitti.fp16.pt",
                                             "0.25x ShuffleDet student distilled from it (FGFI), seed 0"),
}


#: KITTI mAP40 (%) of each shipped model on the 29 real KITTI training images of ``kitti_real`` (official
#: protocol): ``compressdet predict IMAGE_2 --model asset:<name> --save-txt kitti`` then ``compressdet eval``
REAL_KITTI_MAP40 = {"shuffledet_1x_synthkitti": 0.00, "shuffledet_0.25x_imitated_synthkitti": 0.03}


def asset_note(name: str) -> str:
    """The one line ``predict`` prints for a shipped model: what it was trained on and what it is not
    for, so nobody mistakes its empty results on a photo for a bug."""
    name = name[len(ASSET_PREFIX):] if name.startswith(ASSET_PREFIX) else name
    real = REAL_KITTI_MAP40.get(name)
    measured = f" (mAP40 {real:.2f}% on 29 real KITTI images)" if real is not None else ""
    return (f"note: asset:{name} was trained on synthetic SynthKITTI images only; it finds almost nothing in real "
            f"photos{measured}: a demo model, not a real-image detector (compressdet/assets/CARD.md)")


def asset_path(name: str) -> Path:
    """The file of shipped model ``name``; a clear error naming the known ones otherwise."""
    if name not in ASSETS:
        raise UserError(f"unknown asset '{name}' (known: {', '.join(sorted(ASSETS))})")
    path = _HERE / ASSETS[name][0]
    if not path.is_file():
        raise UserError(f"asset '{name}': {path.name} is not installed (a source checkout without the packaged "
                        "models; see compressdet/assets/CARD.md)")
    return path


def resolve_model_path(text: str | Path) -> Path:
    """``asset:<name>`` to the shipped file; any other text is a path, returned as it is."""
    s = str(text)
    return asset_path(s[len(ASSET_PREFIX):]) if s.startswith(ASSET_PREFIX) else Path(s)
