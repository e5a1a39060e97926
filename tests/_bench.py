"""Loading a script of benchmarks/ as a module in tests (scripts are not a package; they import each other
from that folder, so it goes on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


def load_bench(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as module ``<name>_bench`` (a name of its own, so the copy a script
    imports under its plain name stays separate); ``unload_bench`` drops it again."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def unload_bench(name: str) -> None:
    sys.modules.pop(f"{name}_bench", None)
