"""Every Python code block in the docs runs: the blocks of a page run in order, as one script in a fresh
process, in a temp folder holding the repository's ``recipes/`` (what a reader's checkout has), with files
written where a block's first line says ``# file: NAME``. A block that needs long compute says
``# doc-test: skip (reason)`` and is left out. docs/detectors.md's "Your own model" blocks (commands too)
run in tests/test_docs_detectors.py; shell blocks elsewhere need not run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = "# doc-test: skip"
FENCE = re.compile(r"^```(?:python|py)[^\n]*\n(.*?)^```", re.S | re.M)
#: page -> section whose blocks another test runs with its own checks
ELSEWHERE = {"detectors.md": "## Your own model"}


def _python_blocks(page: Path) -> list[str]:
    text = page.read_text()
    section = ELSEWHERE.get(page.name)
    if section:
        start = text.index(section)
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end:] if end > 0 else "")
    return FENCE.findall(text)


PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if _python_blocks(p))


def test_pages_with_python_are_found():
    """The collector sees the pages it should (a regex that matched nothing would pass every page)."""
    assert "reference/api.md" in PAGES
    blocks = FENCE.findall((DOCS / "detectors.md").read_text())
    assert len(blocks) == 2 and not _python_blocks(DOCS / "detectors.md")  # both run in test_docs_detectors


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page, tmp_path):
    script: list[str] = []
    for code in _python_blocks(DOCS / page):
        assert "..." not in code.replace('"..."', ""), f"{page}: a placeholder in a block:\n{code}"
        if SKIP in code:
            assert re.search(re.escape(SKIP) + r" \(.+\)", code), f"{page}: a skipped block says why"
            continue
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(code)
        else:
            script.append(code)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"{page}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
