"""Reading a run directory: its manifest and where the latest run is.

Why a module of its own: export, bench and predict read finished runs but sit below the pipeline
that writes them; they import this, never :mod:`compressdet.pipeline` (arrows point down only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

__all__ = ["MANIFEST", "load_manifest", "find_latest_run", "latest_run_or_fail"]

MANIFEST = "manifest.json"


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; a one-line UserError for a folder that is not a run or a broken manifest."""
    p = Path(run_dir) / MANIFEST
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: not a run directory (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: manifest is not valid JSON ({e.msg})") from None


def find_latest_run(runs_root: Path | str = "runs", recipe_name: str | None = None) -> Path | None:
    """Most recent run directory (by manifest modification time), optionally of one recipe."""
    root = Path(runs_root)
    pattern = f"{recipe_name}/*/{MANIFEST}" if recipe_name else f"*/*/{MANIFEST}"
    cands = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    return cands[-1].parent if cands else None


def latest_run_or_fail(runs_root: Path | str, pass_hint: str, log: Callable[[str], None]) -> Path:
    """What a command reads when the user names no run: the latest one, said aloud, or a one-line error
    telling what to pass instead (``pass_hint``, e.g. "pass RUN_DIR or MODEL_FILE")."""
    run = find_latest_run(runs_root)
    if run is None:
        raise UserError(f"no run found under {runs_root}/ (run a recipe first, or {pass_hint})")
    log(f"using the latest run: {run}")
    return run
