"""What the fuzz tests (``tests/test_fuzz_*.py``) share: the example budget and the per-target count.

Budget: ``COMPRESSDET_FUZZ_EXAMPLES`` examples per target (default 40, what ``make test`` runs);
``make fuzz`` / ``benchmarks/fuzz.py`` raise it. With ``COMPRESSDET_FUZZ_COUNT_DIR`` set, each target
writes ``<target>.json`` there: ``{"examples": n, "failures": 0 | 1}`` (what benchmarks/fuzz.py adds up).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from hypothesis import HealthCheck, settings

__all__ = ["EXAMPLES", "FUZZ", "counted"]

EXAMPLES = int(os.environ.get("COMPRESSDET_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def counted(target: str):
    """Count the examples run for ``target``; write the count (and whether it failed) where the runner asks."""
    box = {"n": 0}
    failed = 1
    try:
        yield box
        failed = 0
    finally:
        out = os.environ.get("COMPRESSDET_FUZZ_COUNT_DIR")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{target}.json").write_text(json.dumps({"examples": box["n"], "failures": failed}))
