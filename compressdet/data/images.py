"""Image admission: an image file is accepted only after a decoder has read all of its data.

Header checks (PIL's ``verify()``) pass a truncated JPEG, which then fails mid-training or is copied
on by a converter. Every reader, converter, ``data stats`` and ``predict`` goes through
:func:`admit_image` / :func:`read_image`, which decode the whole file (PIL with
``LOAD_TRUNCATED_IMAGES`` off) and turn any decoder failure into one :class:`DataError` line naming
the file and what is wrong, with no library-internal paths.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["admit_image", "read_image", "decode_rgb", "IMAGE_FORMATS"]

#: PIL formats an image may be in (what the YOLO/COCO/VOC/KITTI sets use); no EPS/PDF or other plugins
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")  # JPEG covers MPO (camera JPEGs)

_lock = threading.Lock()
#: (resolved path, bytes, mtime_ns) -> (H, W) of files already decoded whole in this process
_admitted: dict[tuple[str, int, int], tuple[int, int]] = {}


def _reason(e: BaseException) -> str:
    """One short line from a decoder's exception: first line, local paths removed, cut at a word."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = re.sub(r"(?:[A-Za-z]:)?(?:[\w.+-]*/)+[\w.+-]+(?::\d+)?", "", text)  # C++ / library source paths
    text = re.sub(r"\s+", " ", text).strip(" :,;-") or type(e).__name__
    if len(text) > 100:
        text = text[:100].rsplit(" ", 1)[0] + " ..."
    return text


def _error(path: Path, where: str, what: str) -> DataError:
    """One line: ``PATH: image not found`` / ``PATH: cannot decode image: why``, or after ``where`` (what
    refers to the file) ``WHERE: image PATH not found`` / ``WHERE: cannot read image PATH: why``."""
    path = str(path).encode("unicode_escape").decode("ascii") if not str(path).isprintable() else path  # one line
    if what == "not found":
        return DataError(f"{where}: image {path} not found" if where else f"{path}: image not found")
    return DataError(f"{where}: cannot read image {path}: {what}" if where else f"{path}: cannot decode image: {what}")


def pil_open(path, **kwargs):
    """PIL's own ``Image.open``. Importing Ultralytics (the yolo family) replaces it with a wrapper that,
    on a file PIL cannot identify, installs and imports pi-heif at run time (and raises ImportError
    offline); here an unreadable file is a DataError, never an install."""
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    open_ = Image.open
    if patches is not None and open_ is getattr(patches, "image_open", None):
        open_ = patches._image_open
    return open_(path, **kwargs)


def _load(path: Path, where: str):
    from PIL import Image, UnidentifiedImageError

    im = None
    try:
        Image.init()  # every plugin registered: naming one not yet loaded in formats= is a KeyError
        im = pil_open(path, formats=IMAGE_FORMATS)
        im.load()
    except Exception as e:  # noqa: BLE001 - a third-party decoder fails many ways on corrupt data
        if im is not None:
            im.close()
        if isinstance(e, UnidentifiedImageError):
            what = "not a PNG, JPEG, BMP, TIFF or WebP file"
        elif isinstance(e, Image.DecompressionBombError):
            what = f"too large to decode safely (more than {2 * Image.MAX_IMAGE_PIXELS} pixels)"
        else:
            what = _reason(e)
        raise _error(path, where, what) from None
    return im


def _open_decoded(path: Path, where: str):
    """The PIL image of ``path`` with every pixel decoded (caller closes it)."""
    from PIL import ImageFile

    try:
        exists = path.exists()
    except (OSError, ValueError):  # a NUL byte or an over-long name: no such file can exist
        exists = False
    if not exists:
        raise _error(path, where, "not found")
    if not path.is_file():
        raise _error(path, where, "not a file")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched PIL to pad truncated files: not for this decode
        with _lock:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                im = _load(path, where)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = True
    else:  # the default: no global to touch, decoders run in parallel threads
        im = _load(path, where)
    w, h = im.size
    if w < 1 or h < 1:
        im.close()
        raise _error(path, where, f"image has no pixels ({w}x{h})")
    return im


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def admit_image(path: str | Path, where: str = "") -> tuple[int, int]:
    """(H, W) of the image at ``path`` once all of it has decoded (remembered per process by size and mtime).

    Args:
        path: the image file.
        where: what refers to it (``ann.json: image id 3``), put in front of the message.
    Raises:
        DataError: missing, not an image, truncated or otherwise undecodable (one line).
    """
    p = Path(path)
    key = _key(p)
    if key is not None and key in _admitted:
        return _admitted[key]
    with _open_decoded(p, where) as im:
        size = (im.size[1], im.size[0])
    if key is not None:
        _admitted[key] = size
    return size


def decode_rgb(path: str | Path, where: str = "") -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of a fully decoded image (DataError as :func:`admit_image`)."""
    p = Path(path)
    with _open_decoded(p, where) as im:
        try:
            arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - e.g. a mode PIL cannot convert
            raise _error(p, where, _reason(e)) from None
    key = _key(p)
    if key is not None:
        _admitted[key] = arr.shape[:2]
    return arr


def read_image(path: str | Path):
    """Fully decode an image into ``uint8 Tensor[3, H, W]`` (RGB).

    Raises:
        DataError: the file is missing, not an image, truncated or cannot be decoded (the message names it).
    """
    import torch

    return torch.from_numpy(np.ascontiguousarray(decode_rgb(path).transpose(2, 0, 1)))
