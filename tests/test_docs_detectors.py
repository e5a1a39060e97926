"""docs/detectors.md's "Your own model" example runs as written: its fenced blocks are read from the
markdown, files written where a block says ``# file: NAME``, Python blocks run with ``python -c`` and
command blocks as ``python -m compressdet ...``, each in a fresh process in one temp folder. A block that
needs long compute says ``# doc-test: skip (reason)`` and is left out (the journey tests run it)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "detectors.md"
SKIP = "# doc-test: skip"


def _blocks(section: str) -> list[tuple[str, str]]:
    text = DOC.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", body, re.S)]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{cmd[:4]} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


@pytest.mark.slow
def test_the_own_model_example_runs_as_written(tmp_path):
    blocks = _blocks("Your own model")
    ran: list[str] = []
    for lang, code in blocks:
        assert "..." not in code, f"a placeholder in the {lang} block:\n{code}"
        first = code.splitlines()[0]
        if SKIP in code:
            assert re.search(re.escape(SKIP) + r" \(.+\)", code), "a skipped block says why"
            continue
        if first.startswith("# file: "):
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(code)
            ran.append(f"file {first}")
        elif lang == "python":
            out = _run([sys.executable, "-c", code], tmp_path)
            ran.append("python")
            if "postprocess" in code:
                assert "'total':" in out and "torch.Size([" in out
        elif lang == "bash":
            for line in code.splitlines():
                if line.strip() and not line.startswith("#"):
                    args = shlex.split(line)
                    assert args[0] == "compressdet", line
                    out = _run([sys.executable, "-m", "compressdet", *args[1:]], tmp_path)
                    ran.append(line)
                    if args[1:3] == ["recipe", "check"]:
                        assert "ok " in out and "factory ./my_detector.py:build" in out
    # the factory file, the recipe, `recipe check` and the Python path: a lost block must not pass silently
    assert ran == ["file # file: my_detector.py", "file # file: my_recipe.yaml",
                   "compressdet recipe check my_recipe.yaml", "python"], ran
    assert (tmp_path / "mine.pt").is_file()


@pytest.mark.parametrize("section", ["Your own model"])
def test_skipped_blocks_are_the_long_ones_only(section):
    skipped = [code for _, code in _blocks(section) if SKIP in code]
    assert len(skipped) == 1 and "compressdet run" in skipped[0]
