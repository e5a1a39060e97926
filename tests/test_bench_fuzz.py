"""benchmarks/fuzz.py (``make fuzz``): rounds add up for the same code, a failing property is never a clean run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "benchmarks" / "fuzz.py"


def _fuzz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FUZZ), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def _target_file(path: Path, body: str) -> Path:
    """A fuzz test file of two targets, ``a`` and ``b``, whose property is ``body`` (on an integer ``n``)."""
    head = ("import sys\nsys.path.insert(0, %r)\n" % str(REPO / "tests")
            + "from _fuzz import FUZZ, counted\nfrom hypothesis import given, strategies as st\n")
    for name in ("a", "b"):
        head += (f"\ndef test_fuzz_{name}():\n    with counted({name!r}) as box:\n"
                 "        @FUZZ\n        @given(n=st.integers())\n"
                 f"        def run(n):\n            box['n'] += 1\n            {body}\n        run()\n")
    path.write_text(head)
    return path


def test_rounds_add_up_across_runs_of_the_same_code(tmp_path):
    out = tmp_path / "fuzz.json"
    files = ["--files", str(_target_file(tmp_path / "test_fuzz_ok.py", "assert isinstance(n, int)")), "--out", str(out)]
    first = _fuzz("--examples", "4", "--chunk", "4", "--jobs", "1", *files)
    assert first.returncode == 0, first.stdout + first.stderr
    rep = json.loads(out.read_text())
    assert rep["rounds"] == 1 and rep["failures"] == 0 and rep["complete"]
    assert set(rep["targets"]) == {"a", "b"}
    assert all(t["examples"] >= 4 for t in rep["targets"].values())
    assert rep["commit"] and len(rep["code"]) == 16
    second = _fuzz("--examples", "8", "--chunk", "4", "--jobs", "2", *files)  # one more round on top, 2 processes
    assert second.returncode == 0, second.stdout + second.stderr
    rep2 = json.loads(out.read_text())
    assert rep2["rounds"] == 2 and rep2["code"] == rep["code"]
    for name, t in rep["targets"].items():
        assert rep2["targets"][name]["examples"] >= t["examples"] + 4, name

    sys.path.insert(0, str(REPO / "benchmarks"))
    import readme_tables  # the data guide's block: counts per target from this JSON, incompleteness said

    block = readme_tables.GENERATORS["fuzz.json"](rep2)
    assert f"--examples 8 --chunk 4` at commit `{rep2['commit'][:10]}`" in block and rep2["code"] in block
    assert f"**{rep2['examples_total']:,} examples, 0 failures**" in block and "incomplete" not in block
    assert f"| a | {rep2['targets']['a']['examples']:,} | 0 |" in block
    short = {**rep2, "examples_per_target": 10**5}
    assert "incomplete: not every target reached 100,000" in readme_tables.GENERATORS["fuzz.json"](short)


def test_a_failing_property_fails_the_run(tmp_path):
    bad = _target_file(tmp_path / "test_fuzz_broken.py", "assert n < 10")
    out = tmp_path / "fuzz.json"
    proc = _fuzz("--examples", "200", "--files", str(bad), "--out", str(out), "--jobs", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = json.loads(out.read_text())
    assert rep["failures"] >= 1 and rep["targets"]["a"]["failures"] == 1
    assert rep["failed_tests"], rep
