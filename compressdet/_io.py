"""Atomic file writes and hashing.

Every file the pipeline writes goes through here: written to a temporary file in the same folder,
flushed, fsynced and renamed over the target, so a killed process leaves either the old file or
the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_dir", "atomic_save_figure", "atomic_write_text", "atomic_write_bytes", "atomic_write_json",
           "atomic_torch_save", "atomic_save_with", "canonical", "sha256_file"]


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_open_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: an existing file keeps its own, a new one gets 0666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. The result has the
    mode a plain ``open(path, "w")`` would leave (0666 & ~umask, or the replaced file's own), not
    ``mkstemp``'s 0600: shared runs and served folders stay readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    try:  # mkstemp makes 0600; the result must be readable as a plain open() would leave it
        os.fchmod(fd, _plain_open_mode(path))
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it is renamed onto ``path``.

    For outputs made of many files (a converted data set): a run that stops half way leaves no
    folder that looks complete. ``path`` must be absent or an empty folder. The folder gets the mode
    a plain ``mkdir`` would give (``mkdtemp`` makes 0700).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.is_dir():
            path.rmdir()  # an empty folder only: OSError otherwise, and nothing is replaced
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """A matplotlib figure as a PNG at ``path``, atomically, then closed (pyplot keeps every open figure)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def atomic_save_with(path: str | os.PathLike, write: Callable[[io.BytesIO], Any]) -> Path:
    """``write(buffer)`` into memory, then the bytes atomically to ``path``.

    For serialisers that put the file's own name into what they write: ``torch.save`` and
    ``torch.export.save`` name the zip archive's records after the file (``.model.pt.x7f3k/data.pkl``
    for the atomic write's random temp name), so two identical saves through temp files differ in
    bytes. Written to a buffer the archive is always called ``archive``, and equal objects give
    byte-identical files (the reproducibility contract: same recipe, seed and inputs -> same sha256).
    """
    buf = io.BytesIO()
    write(buf)
    return atomic_write_bytes(path, buf.getvalue())


def canonical(obj: Any, _strings: dict[str, str] | None = None) -> Any:
    """A copy of the plain containers in ``obj`` in which equal strings are one object.

    Pickle (inside ``torch.save``) memoizes objects by identity: a key that is one interned object in
    a fresh run but separate objects after a checkpoint was loaded and resumed is written differently,
    so the same values gave different bytes. Dicts (their type kept, e.g. ``OrderedDict``), lists and
    tuples are rebuilt and every string goes through one table; tensors and numbers are kept as they are.
    A ``state_dict``'s ``_metadata`` (module versions, which ``load_state_dict`` reads: without it an
    observer loads as an old version and keeps its default ``eps``) is carried over.
    """
    strings = {} if _strings is None else _strings
    t = type(obj)
    if t is str:
        return strings.setdefault(obj, obj)
    if isinstance(obj, dict):
        items = [(canonical(k, strings), canonical(v, strings)) for k, v in obj.items()]
        try:
            out = t(items)
        except TypeError:  # a dict subclass with another constructor: keep it as it is
            return obj
        meta = getattr(obj, "_metadata", None)  # a state_dict's per-module versions: loading depends on them
        if meta is not None:
            out._metadata = canonical(meta, strings)
        return out
    if t is list:
        return [canonical(v, strings) for v in obj]
    if t is tuple:
        return tuple(canonical(v, strings) for v in obj)
    return obj


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically and reproducibly: equal objects give byte-identical files, also after a
    resume (see :func:`atomic_save_with` and :func:`canonical`); torch is imported lazily so light
    commands stay light."""
    import torch

    obj = canonical(obj)
    return atomic_save_with(path, lambda buf: torch.save(obj, buf))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
