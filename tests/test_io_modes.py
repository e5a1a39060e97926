"""Atomic writes leave the mode a plain ``open()`` / ``mkdir`` would (issue #44): not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from compressdet._io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_files_follow_the_umask(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what a plain open() gives under this umask
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1})
    with atomic_path(tmp_path / "c.png", suffix=".png") as tmp:
        tmp.write_bytes(b"png")
    expected = 0o666 & ~umask
    assert _mode(plain) == expected
    for name in ("a.txt", "sub/b.json", "c.png"):
        assert _mode(tmp_path / name) == expected, name


def test_overwrite_keeps_the_existing_mode(tmp_path, umask):
    p = tmp_path / "shared.txt"
    p.write_text("old")
    os.chmod(p, 0o640)
    atomic_write_text(p, "new")
    assert p.read_text() == "new" and _mode(p) == 0o640


def test_atomic_dir_mode_and_no_partial_output(tmp_path, umask):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "f.txt").write_text("x")
    assert (out / "f.txt").read_text() == "x"
    assert _mode(out) == 0o777 & ~umask
    bad = tmp_path / "bad"
    with pytest.raises(RuntimeError), atomic_dir(bad) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("stop")
    assert not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind


def test_generated_synth_set_is_readable_by_others(tmp_path, umask):
    from compressdet.data.synth import generate_synth
    from compressdet.recipe import SynthConfig

    out = generate_synth(tmp_path / "synth", SynthConfig(num_images=2, size=(64, 32), seed=0))
    assert _mode(out) == 0o777 & ~umask
    label = next((out / "training" / "label_2").iterdir())
    assert _mode(label) == 0o666 & ~umask
