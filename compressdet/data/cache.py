"""Preprocessed image cache: every image decoded once and resized into one uint8 memmap.

PNG decoding of a 1242x375 KITTI frame costs ~10-20 ms on one core; with two cores that alone
starves a training step. With ``data.cache: true`` the images of a split are decoded and resized
to a working size once, stored as ``images.u8`` (``uint8 [N, 3, H, W]``, RGB) plus ``meta.json``,
and read back with a memmap (a page-cache hit, no decoding). The folder is keyed by a hash of the
source files (path, size, mtime) and the settings, and built in a temp folder then renamed, so a
killed build never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from .kitti import read_image

__all__ = ["ImageCache", "cache_root", "CACHE_VERSION"]

CACHE_VERSION = 1


def cache_root() -> Path:
    """``$COMPRESSDET_CACHE`` if set, else ``~/.cache/compressdet``."""
    env = os.environ.get("COMPRESSDET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compressdet"


class ImageCache:
    """Read side of a built cache. Open it with :meth:`build` (which reuses an existing one).

    The memmap is opened lazily per process, so the object pickles cheaply into DataLoader workers.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.ids: list[str] = meta["ids"]
        self.size: tuple[int, int] = tuple(meta["size"])
        self.orig_sizes: list[tuple[int, int]] = [tuple(s) for s in meta["orig_sizes"]]
        self._index = {k: i for i, k in enumerate(self.ids)}
        self._mm: np.memmap | None = None

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_mm"] = None
        return d

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, image_id: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """(uint8 RGB Tensor[3, H, W] at the working size, original (H0, W0))."""
        if self._mm is None:
            h, w = self.size
            self._mm = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r", shape=(len(self.ids), 3, h, w))
        i = self._index[image_id]
        return torch.from_numpy(np.array(self._mm[i])), self.orig_sizes[i]

    @staticmethod
    def key(image_paths: list[Path], size: tuple[int, int]) -> str:
        h = hashlib.sha256(f"v{CACHE_VERSION}|{size[0]}x{size[1]}".encode())
        for p in image_paths:
            st = p.stat()
            h.update(f"|{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    @classmethod
    def build(cls, image_paths: dict[str, Path], size: tuple[int, int], folder: Path | None = None) -> ImageCache:
        """Decode + resize every image once (skipped when a cache with the same key exists).

        Args:
            image_paths: image id -> file, in dataset order.
            size: working (H, W), normally the model input.
            folder: parent folder of cache entries (default ``cache_root()/images``).
        Raises:
            DataError: an image is missing or unreadable (names it).
        """
        paths = list(image_paths.values())
        for p in paths:  # a missing file must be a DataError naming it, not a stat() traceback
            if not p.is_file():
                read_image(p)
        parent = Path(folder) if folder else cache_root() / "images"
        final = parent / cls.key(paths, size)
        if (final / "meta.json").is_file():
            return cls(final)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
        try:
            h, w = size
            mm = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=(len(paths), 3, h, w))
            orig = []
            for i, p in enumerate(paths):
                img = read_image(p)
                orig.append(tuple(img.shape[-2:]))
                mm[i] = F.resize(img, [h, w], antialias=True).numpy()
            mm.flush()
            del mm
            (tmp / "meta.json").write_text(json.dumps({"ids": list(image_paths), "size": [h, w], "orig_sizes": orig,
                                                       "version": CACHE_VERSION}))
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished the same cache first: use theirs
                if not (final / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(final)
