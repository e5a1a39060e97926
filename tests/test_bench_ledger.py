"""The benchmark ledger: finished runs recorded in the repository come back on a machine that lost
its run folders, byte for byte, and a changed ledger file is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _ledger import Ledger  # noqa: E402


def _finished_run(run_dir: Path) -> dict:
    (run_dir / "student").mkdir(parents=True)
    (run_dir / "teacher").mkdir()
    (run_dir / "student" / "model.pt").write_bytes(b"student weights")
    (run_dir / "teacher" / "model.pt").write_bytes(b"a copied input")
    (run_dir / "student" / "checkpoints").mkdir()
    return {"recipe": "s-run", "stages": {
        "teacher": {"kind": "model_file", "status": "done", "artifacts": {"model": {"path": "teacher/model.pt"}}},
        "student": {"kind": "train", "status": "done", "metrics": {"map40": 3.5},
                    "artifacts": {"model": {"path": "student/model.pt"}}}}}


def test_put_then_get_restores_trained_models_only(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    man = _finished_run(tmp_path / "runs" / "s-run")
    ledger.put("s-run", tmp_path / "runs" / "s-run", man)
    entry = tmp_path / "ledger" / "s-run"
    assert (entry / "student" / "model.pt").read_bytes() == b"student weights"
    assert not (entry / "teacher").exists()  # a model_file stage's input is not copied into every student
    info = json.loads((entry / "ledger.json").read_text())
    assert set(info["files"]) == {"student/model.pt"} and info["commit"]

    fresh = tmp_path / "fresh" / "s-run"
    got = ledger.get("s-run", fresh)
    assert got == man and (fresh / "student" / "model.pt").read_bytes() == b"student weights"
    assert ledger.get("other-run", tmp_path / "x") is None
    assert set(ledger.entries()) == {"s-run"}


def test_changed_ledger_file_is_refused(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    ledger.put("s-run", tmp_path / "runs" / "s-run", _finished_run(tmp_path / "runs" / "s-run"))
    (tmp_path / "ledger" / "s-run" / "student" / "model.pt").write_bytes(b"edited by hand")
    with pytest.raises(SystemExit, match="ledger file changed"):
        ledger.get("s-run", tmp_path / "fresh")


def test_half_written_entry_is_not_an_entry(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    ledger.put("s-run", tmp_path / "runs" / "s-run", _finished_run(tmp_path / "runs" / "s-run"))
    (tmp_path / "ledger" / "s-run" / "manifest.json").unlink()  # killed before the manifest: not recorded
    assert ledger.get("s-run", tmp_path / "fresh") is None and ledger.entries() == {}


def test_disabled_ledger_keeps_nothing(tmp_path):
    ledger = Ledger(None)
    ledger.put("s-run", tmp_path / "runs" / "s-run", _finished_run(tmp_path / "runs" / "s-run"))
    assert ledger.get("s-run", tmp_path / "fresh") is None and ledger.test_dir is None and ledger.entries() == {}


def test_int8_stage_keeps_its_program_and_graph(tmp_path):
    """An int8 arm is reported from its .pt2 program and its QDQ graph: both come back."""
    run = tmp_path / "runs" / "q-run"
    (run / "qat").mkdir(parents=True)
    for f, body in (("quantized.pt2", b"program"), ("model_int8.onnx", b"graph"), ("report.json", b"{}")):
        (run / "qat" / f).write_bytes(body)
    man = {"recipe": "q-run", "stages": {"qat": {"kind": "qat", "status": "done", "artifacts": {
        "quantized": {"path": "qat/quantized.pt2"}, "onnx_int8": {"path": "qat/model_int8.onnx"},
        "report": {"path": "qat/report.json"}}}}}
    ledger = Ledger(tmp_path / "ledger")
    ledger.put("q-run", run, man)
    fresh = tmp_path / "fresh"
    assert ledger.get("q-run", fresh) == man
    assert (fresh / "qat" / "quantized.pt2").read_bytes() == b"program"
    assert (fresh / "qat" / "model_int8.onnx").read_bytes() == b"graph"
    assert not (fresh / "qat" / "report.json").exists()  # re-derivable, not kept


def test_cache_dir_lives_in_the_ledger_when_there_is_one(tmp_path):
    assert Ledger(tmp_path / "l").cache_dir("pruned0", tmp_path / "w") == tmp_path / "l" / "pruned0"
    assert Ledger(None).cache_dir("pruned0", tmp_path / "w") == tmp_path / "w"


def test_store_keeps_the_bytes_outside_the_record(tmp_path):
    """With a separate store (``$COMPRESSDET_LEDGER_STORE``) the weights live there; a record whose bytes
    are gone is re-run, not trusted."""
    ledger = Ledger(tmp_path / "record", store=tmp_path / "store")
    man = _finished_run(tmp_path / "runs" / "s-run")
    ledger.put("s-run", tmp_path / "runs" / "s-run", man)
    assert (tmp_path / "store" / "s-run" / "student" / "model.pt").read_bytes() == b"student weights"
    assert not list((tmp_path / "record").rglob("*.pt")) and (tmp_path / "record" / "s-run" / "manifest.json").is_file()
    assert ledger.get("s-run", tmp_path / "fresh") == man
    (tmp_path / "store" / "s-run" / "student" / "model.pt").unlink()
    assert Ledger(tmp_path / "record", store=tmp_path / "store").get("s-run", tmp_path / "fresh2") is None


def test_remade_run_must_reproduce_its_recorded_bytes(tmp_path):
    """A run re-made on a machine that lost its bytes is checked against the record, not trusted."""
    ledger = Ledger(tmp_path / "ledger")
    ledger.put("s-run", tmp_path / "runs" / "s-run", man := _finished_run(tmp_path / "runs" / "s-run"))
    (tmp_path / "ledger" / "s-run" / "student" / "model.pt").unlink()  # the bytes are gone
    assert ledger.get("s-run", tmp_path / "fresh") is None  # -> trained again
    ledger.put("s-run", tmp_path / "runs" / "s-run", man)  # same bytes: accepted
    (tmp_path / "runs" / "s-run" / "student" / "model.pt").write_bytes(b"other weights")
    (tmp_path / "ledger" / "s-run" / "student" / "model.pt").unlink()
    with pytest.raises(SystemExit, match="does not reproduce.*on this CPU platform too"):
        ledger.put("s-run", tmp_path / "runs" / "s-run", man)
    assert not list((tmp_path / "ledger" / "s-run").rglob("*.pt*"))  # nothing half-written left


def test_a_remake_on_another_cpu_is_kept_beside_its_record(tmp_path, capsys):
    """Bytes reproduce on one CPU platform only: the record says which. A re-make elsewhere that does not
    reproduce is kept as that platform's re-make (the record untouched), is the run there from then on,
    and is found by its bytes; on the record's own platform, or against an earlier re-make here, a
    re-make that differs is refused."""
    from _ledger import _variant_dir
    from _reuse import find_model

    from compressdet._io import sha256_file
    from compressdet.pipeline import cpu_platform

    ledger = Ledger(tmp_path / "ledger")
    run = tmp_path / "runs" / "s-run"
    ledger.put("s-run", run, man := _finished_run(run))
    entry = tmp_path / "ledger" / "s-run"
    info_path = entry / "ledger.json"
    assert json.loads(info_path.read_text())["platform"] == cpu_platform()
    recorded = {**json.loads(info_path.read_text()), "platform": "Other CPU (x86_64, torch AVX512)"}
    info_path.write_text(json.dumps(recorded))
    (entry / "student" / "model.pt").rename(tmp_path / "recorded.pt")  # this machine lacks the recorded bytes
    assert ledger.get("s-run", tmp_path / "fresh") is None  # -> trained again
    (run / "student" / "model.pt").write_bytes(b"other weights")
    remade = {**man, "stages": {**man["stages"], "student": {**man["stages"]["student"], "metrics": {"map40": 3.4}}}}
    ledger.put("s-run", run, {**remade, "ledger_variant": "a get's mark"})  # marks are not the run's
    err = capsys.readouterr().err
    assert "recorded on Other CPU (x86_64, torch AVX512) and re-made on " in err and _variant_dir() in err
    assert json.loads(info_path.read_text()) == recorded  # the record stands
    variant = entry / _variant_dir()
    vinfo = json.loads((variant / "ledger.json").read_text())
    assert vinfo["platform"] == cpu_platform() and vinfo["remakes_record_of"] == recorded["platform"]
    assert json.loads((variant / "manifest.json").read_text()) == remade
    assert (variant / "student" / "model.pt").read_bytes() == b"other weights"

    got = ledger.get("s-run", tmp_path / "fresh2")
    assert got == {**remade, "ledger_variant": _variant_dir()}
    assert (tmp_path / "fresh2" / "student" / "model.pt").read_bytes() == b"other weights"
    assert ledger.file(got, "student/model.pt") == variant / "student" / "model.pt"
    assert ledger.kept_file("s-run", "student") == (variant / "student" / "model.pt", remade)
    e = ledger.entries()["s-run"]  # provenance here: the re-make's bytes, and the record it re-makes
    assert e["files"] == vinfo["files"] and e["ledger_variant"] == _variant_dir() and e["record"] == recorded
    sha = sha256_file(variant / "student" / "model.pt")
    assert find_model({"preset": "cpu", "ledger": {"path": str(ledger.root)}}, "/gone/model.pt", sha) == \
        variant / "student" / "model.pt"
    # the record's bytes back in the store: this machine keeps building on its own re-make
    (tmp_path / "recorded.pt").rename(entry / "student" / "model.pt")
    assert ledger.get("s-run", tmp_path / "fresh3") == got
    assert ledger.kept_file("s-run", "student")[0] == variant / "student" / "model.pt"
    (entry / "student" / "model.pt").unlink()
    # only the records here: a leaf caller gets the re-make's record and sha256
    (variant / "student" / "model.pt").rename(tmp_path / "remade.pt")
    assert ledger.get("s-run", tmp_path / "fresh4") is None
    assert ledger.get("s-run", tmp_path / "fresh4", need_files=False) == \
        {**remade, "ledger_variant": _variant_dir(), "ledger_files": vinfo["files"]}
    (tmp_path / "remade.pt").rename(variant / "student" / "model.pt")
    # a record that does not name its CPU: a re-make is kept too, saying it could not tell
    info = json.loads(info_path.read_text())
    del info["platform"]
    info_path.write_text(json.dumps(info))
    ledger.put("s-run", run, remade)
    assert "does not name the CPU it was made on" in capsys.readouterr().err
    # re-made here once more with other bytes: this platform does not reproduce itself, a bug: refused
    (run / "student" / "model.pt").write_bytes(b"third weights")
    with pytest.raises(SystemExit, match="does not reproduce this CPU platform's earlier re-make"):
        ledger.put("s-run", run, remade)
    assert (variant / "student" / "model.pt").read_bytes() == b"other weights"
    assert json.loads((variant / "ledger.json").read_text())["files"] == vinfo["files"]
    assert (variant / "manifest.json").is_file()
    # on the record's own platform a re-make that differs is refused, nothing written
    info_path.write_text(json.dumps({**info, "platform": cpu_platform()}))
    with pytest.raises(SystemExit, match="on this CPU platform too"):
        ledger.put("s-run", run, remade)
    assert (variant / "student" / "model.pt").read_bytes() == b"other weights"
    assert not list(entry.rglob("*.tmp")) and (entry / "manifest.json").is_file()


def test_benchmark_ledgers_keep_their_bytes_beside_the_records(monkeypatch):
    """Bytes beside the records (ignored by git, see .gitignore) unless COMPRESSDET_LEDGER_STORE says otherwise."""
    monkeypatch.delenv("COMPRESSDET_LEDGER_STORE", raising=False)
    ledger = Ledger.for_bench("prune", "cpu")
    assert ledger.store == ledger.root == Path(__file__).resolve().parents[1] / "benchmarks" / "ledger" / "prune" / "cpu"
    monkeypatch.setenv("COMPRESSDET_LEDGER_STORE", "/elsewhere")
    assert Ledger.for_bench("prune", "cpu").store == Path("/elsewhere/prune/cpu")


def test_run_digest_names_the_run_not_the_checkout(tmp_path):
    """Two checkouts side by side with ../shared give the same run names; other paths still count."""
    from _protocol import run_digest

    def recipe(root):
        return {"data": {"synth": {"layouts": str(root.parent / "shared" / "kitti" / "label_2")}},
                "stages": [{"path": str(root / "benchmarks" / "ledger" / "t.pt")}], "lr": 0.01}

    a, b = tmp_path / "work" / "main", tmp_path / "check" / "work" / "main"
    assert run_digest(recipe(a), root=a) == run_digest(recipe(b), root=b)
    assert run_digest({**recipe(a), "lr": 0.02}, root=a) != run_digest(recipe(a), root=a)
    outside = {"model": str(tmp_path / "other" / "t.pt")}
    assert run_digest(outside, root=a) != run_digest({"model": str(tmp_path / "another" / "t.pt")}, root=a)


def test_reused_models_are_found_by_their_bytes(tmp_path):
    """A results JSON whose recorded path is gone (another machine) still finds its model in the ledger
    by sha256, under whatever run name it was re-made; other bytes are not taken for it."""
    from _reuse import find_model

    from compressdet._io import sha256_file

    ledger = Ledger(tmp_path / "ledger" / "imitation_gain" / "cpu")
    ledger.put("s-run-newname", tmp_path / "runs" / "s-run", _finished_run(tmp_path / "runs" / "s-run"))
    sha = sha256_file(tmp_path / "runs" / "s-run" / "student" / "model.pt")
    r = {"preset": "cpu", "ledger": {"path": str(ledger.root)}}
    gone = "/root/.cache/compressdet/ledger/imitation_gain/cpu/s-run-oldname/student/model.pt"
    assert find_model(r, gone, sha) == ledger.root / "s-run-newname" / "student" / "model.pt"
    assert find_model(r, gone, "0" * 64) is None
    assert find_model({"preset": "cpu"}, str(tmp_path / "runs" / "s-run" / "student" / "model.pt"), sha).is_file()


def test_leaf_run_comes_back_as_its_record_without_bytes(tmp_path):
    """A run only read for its metrics (``need_files=False``) comes back from its record on a machine that
    lacks its bytes, with the recorded sha256 (what its cached test evaluation is keyed by); a run others
    build on still gets ``None`` (train again)."""
    ledger = Ledger(tmp_path / "record", store=tmp_path / "store")
    man = _finished_run(tmp_path / "runs" / "s-run")
    ledger.put("s-run", tmp_path / "runs" / "s-run", man)
    sha = json.loads((tmp_path / "record" / "s-run" / "ledger.json").read_text())["files"]["student/model.pt"]
    assert ledger.get("s-run", tmp_path / "a", need_files=False) == man  # bytes present: the usual restore
    (tmp_path / "store" / "s-run" / "student" / "model.pt").unlink()
    assert ledger.get("s-run", tmp_path / "fresh") is None
    got = ledger.get("s-run", tmp_path / "fresh", need_files=False)
    assert got == {**man, "ledger_files": {"student/model.pt": sha}}
    assert not (tmp_path / "fresh").exists()


def test_test_map_without_the_file_needs_a_cached_evaluation(tmp_path):
    from _protocol import test_map

    with pytest.raises(FileNotFoundError, match="no test evaluation of sha256 abababababab"):
        test_map(tmp_path / "gone.pt", {"root": "x"}, tmp_path, model_sha256="ab" * 32)


def test_a_results_path_finds_this_platforms_remake(tmp_path):
    """deploy.py reads families.json's model paths: where this CPU re-made the run, the path leads to the
    re-make; otherwise it stays as it was."""
    from _ledger import _variant_dir, remade_here

    recorded = tmp_path / "ledger" / "imitation_gain" / "cpu" / "I-s0" / "student" / "model.pt"
    assert remade_here(recorded) == recorded  # neither here: unchanged (the caller says it is missing)
    remake = tmp_path / "ledger" / "imitation_gain" / "cpu" / "I-s0" / _variant_dir() / "student" / "model.pt"
    remake.parent.mkdir(parents=True)
    remake.write_bytes(b"re-made")
    assert remade_here(recorded) == remake
    recorded.parent.mkdir(parents=True)
    recorded.write_bytes(b"recorded")
    assert remade_here(recorded) == remake  # what this machine's other runs were built on, as Ledger.get
    assert remade_here(remake) == remake  # already a re-make's path
    top = tmp_path / "ledger" / "quant" / "cpu" / "q-run" / "model.onnx"  # a file at the top of its run
    (top.parent / _variant_dir()).mkdir(parents=True)
    (top.parent / _variant_dir() / "model.onnx").write_bytes(b"graph")
    assert remade_here(top) == top.parent / _variant_dir() / "model.onnx"
