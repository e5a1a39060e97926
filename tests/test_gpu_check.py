"""benchmarks/gpu_check.py: on a machine without CUDA it runs, exits 0 and reports every step skipped ("no CUDA")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_skips_every_step(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: run benchmarks/gpu_check.py itself")
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert list(rep["steps"]) == ["cuda_tests", "ddp_amp_smoke", "ptq_s8_symmetric", "tensorrt_fp16", "tensorrt_int8",
                                 "bench_tensorrt"]
    assert all(s == {"status": "skipped", "reason": "no CUDA"} for s in rep["steps"].values())
    assert rep["summary"] == {"passed": 0, "failed": 0, "skipped": 6} and rep["cuda_available"] is False
    assert rep["latencies"] == {}


def test_gpu_check_finds_the_cuda_tests():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_check import cuda_tests
    finally:
        sys.path.pop(0)
    ids = cuda_tests()
    assert "tests/test_distributed.py::test_cuda_uses_syncbn" in ids
    assert "tests/test_tensorrt.py::test_tensorrt_engine_runs_and_benches" in ids
    assert not any("test_cross_process_bn_is_plain_bn_in_one_process" in i for i in ids)


def test_junit_outcomes_read_every_test_state(tmp_path):
    """The CUDA-tests step reads pytest's JUnit XML: passed, failed and skipped tests each named as such
    (a skipped test's -rA line names its file:line, not its node id, so that text was no use)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_check import _junit_outcomes
    finally:
        sys.path.pop(0)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_demo.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n\n"
        "def test_skip():\n    pytest.skip('no CUDA')\n")
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "tests/test_demo.py"], cwd=tmp_path, capture_output=True, timeout=120)
    ids = [f"tests/test_demo.py::{n}" for n in ("test_ok", "test_bad", "test_skip", "test_gone")]
    assert _junit_outcomes(xml, ids) == dict(zip(ids, ["passed", "failed", "skipped", "not run"]))
    assert _junit_outcomes(tmp_path / "missing.xml", ids[:1]) == {ids[0]: "not run"}
