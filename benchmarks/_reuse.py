"""The imitation benchmark's trained models, for the prune and INT8 benchmarks' ``cpu`` presets.

Training a 1x teacher and a 0.25x imitation student takes most of a CPU budget; the ``cpu``
presets of ``prune.py`` and ``quant.py`` start from what ``imitation_gain.py`` already trained
(same SynthKITTI set, input size and val subset), entering each model through a ``model_file``
stage pinned by sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def student_settings(preset: str = "cpu") -> dict:
    """The settings the imitation benchmark's students train with under ``preset``: ``{"data",
    "eval_images", "batch", "threads", "channels_last"}``, built by the functions that built its
    student recipes."""
    import imitation_gain

    p = imitation_gain.PRESETS[preset]
    st = imitation_gain._stage("student", "-", 1, p, 1)
    return {"data": imitation_gain._data(p, True), "eval_images": st["eval"].get("max_images"),
            "batch": st["schedule"]["batch_size"], "threads": st["schedule"].get("threads"),
            "channels_last": st["schedule"]["channels_last"]}


def _checked_results(results_json: Path) -> dict:
    """The imitation benchmark's results JSON, once its teacher file is known to be the recorded one."""
    if not results_json.is_file():
        raise SystemExit(f"{results_json}: not found; run benchmarks/imitation_gain.py first (its models are reused)")
    r = json.loads(results_json.read_text())
    teacher = find_model(r, r["teacher"]["model"], r["teacher"]["sha256"])
    if teacher is None:
        raise SystemExit(f"{r['teacher']['model']}: the imitation benchmark's teacher is missing or changed; re-run "
                         "benchmarks/imitation_gain.py (--teacher-only retrains just the teacher; finished runs "
                         "are recorded under benchmarks/ledger/imitation_gain; a teacher re-made on another CPU "
                         "type than the results' is not theirs: re-run the whole benchmark there)")
    r["teacher"]["model"] = str(teacher)
    return r


def find_model(r: dict, path: str, sha256: str | None) -> Path | None:
    """A model the results JSON ``r`` names, by its bytes: the recorded path when it still holds them,
    else any file of the results' ledger with that sha256 (the run re-made on another machine, whose
    ledger entry may carry another name). ``sha256`` None (results without a ledger): the path, if it
    exists. ``None`` when no such file exists here."""
    from _ledger import Ledger

    from compressdet._io import sha256_file

    p = repo_path(path)
    if p.is_file() and (sha256 is None or sha256_file(p) == sha256):
        return p
    if sha256 is None or not r.get("ledger"):
        return None
    ledger = Ledger.at(repo_path(r["ledger"]["path"]))
    # the recorded runs, then the re-makes on other CPU platforms (``Ledger.put``), beside their records
    for entry in [*sorted(ledger.root.glob("*/ledger.json")), *sorted(ledger.root.glob("*/platforms/*/ledger.json"))]:
        for rel, sha in json.loads(entry.read_text())["files"].items():
            f = ledger.store / entry.parent.relative_to(ledger.root) / rel
            if sha == sha256 and f.is_file() and sha256_file(f) == sha256:
                return f
    return None


def repo_path(path: str) -> Path:
    """A results JSON's model path: relative ones are relative to the repository (the ledger's files)."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def _teacher_keys(r: dict) -> dict:
    return {"preset": r["preset"], "teacher": repo_path(r["teacher"]["model"]), "teacher_sha256": r["teacher"]["sha256"],
            "best_weight": r["best_weight"]}


def imitation_teacher(results_json: Path = RESULTS / "imitation_gain.json") -> dict:
    """The imitation benchmark's teacher, and the settings its students trained with.

    For a benchmark that trains its own students (``prune.py --preset cpu``): it needs the teacher
    file only, not a trained 0.25x student.

    Returns ``{"preset", "teacher", "teacher_sha256", "best_weight"}`` and :func:`student_settings`;
    exits with a one-line message when the teacher is missing or changed.
    """
    r = _checked_results(results_json)
    return {**_teacher_keys(r), **student_settings(r["preset"])}


def imitation_students(results_json: Path = RESULTS / "imitation_gain.json") -> dict:
    """The imitation benchmark's teacher and its chosen 0.25x-I student of every seed (protocol
    results only), for a benchmark whose seeds pair with the imitation benchmark's.

    Returns :func:`imitation_teacher`'s keys plus ``"students": {seed: model file}``,
    ``"student_history": {seed: [(step, val map40), ...]}`` and ``"student_steps"``; exits with a
    one-line message when the results predate the protocol or a student file is missing.
    """
    r = _checked_results(results_json)
    if "report_split" not in r:
        raise SystemExit(f"{results_json}: pre-protocol imitation results (no per-seed students); re-run "
                         "benchmarks/imitation_gain.py")
    c = r["chosen"]["0.25x-I"]
    students = {}
    for seed in r["seeds"]:
        prefix = f"I-lr{c['lr']}-w{c['weight']}-s{seed}-"
        hits = [(k, p) for k, p in r["student_models"].items() if k.startswith(prefix)]
        found = None
        if len(hits) == 1:
            sha = (r.get("ledger") or {}).get("runs", {}).get(hits[0][0], {}).get("files", {}).get("student/model.pt")
            found = find_model(r, hits[0][1], sha)
        if found is None:
            raise SystemExit(f"{results_json}: the seed-{seed} 0.25x-I student ({prefix}*) is missing; re-make it "
                             f"with benchmarks/imitation_gain.py --preset {r['preset']} --remake-chosen 0.25x-I")
        students[seed] = found
    hist = (r.get("eval_history") or {}).get("0.25x-I", {})
    return {**_teacher_keys(r), **student_settings(r["preset"]), "students": students,
            "student_history": {s: [tuple(x) for x in hist.get(str(s), [])] for s in students},
            "student_steps": r["steps"]["student"]}
