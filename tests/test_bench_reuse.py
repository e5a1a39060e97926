"""benchmarks/_reuse.py: what the prune/INT8 ``cpu`` presets take from the imitation benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _reuse  # noqa: E402
import imitation_gain  # noqa: E402

from compressdet._io import sha256_file  # noqa: E402


def _results(tmp_path: Path, teacher: Path, sha: str) -> Path:
    out = tmp_path / "imitation_gain.json"
    out.write_text(json.dumps({"preset": "cpu", "best_weight": 1.0, "teacher": {"model": str(teacher), "sha256": sha}}))
    return out


def test_teacher_only_reuse_takes_the_students_settings_from_the_preset(tmp_path):
    teacher = tmp_path / "runs" / "t" / "teacher" / "model.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"weights")
    r = _reuse.imitation_teacher(_results(tmp_path, teacher, sha256_file(teacher)))
    p = imitation_gain.PRESETS["cpu"]
    assert r["teacher"] == teacher and r["best_weight"] == 1.0
    assert r["data"] == imitation_gain._data(p, True) and r["data"]["augment"] == {"enabled": False}
    assert (r["batch"], r["threads"], r["eval_images"], r["channels_last"]) == (2, 2, None, True)
    # a teacher that is not the recorded one is refused, as is a missing one
    with pytest.raises(SystemExit, match="missing or changed"):
        _reuse.imitation_teacher(_results(tmp_path, teacher, "0" * 64))
    with pytest.raises(SystemExit, match="missing or changed"):
        _reuse.imitation_teacher(_results(tmp_path, tmp_path / "nope.pt", "0" * 64))
    # a path relative to the repository (the committed ledger's files) resolves against the repository
    assert _reuse.repo_path("benchmarks/ledger/x.pt") == Path(_reuse.__file__).resolve().parents[1] / "benchmarks/ledger/x.pt"
