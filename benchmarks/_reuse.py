"""The imitation benchmark's trained models, for the prune and INT8 benchmarks' ``cpu`` presets.

Training a 1x teacher and a 0.25x imitation student takes most of a CPU budget; the ``cpu``
presets of ``prune.py`` and ``quant.py`` start from what ``imitation_gain.py`` already trained
(same SynthKITTI set, input size and val subset), entering each model through a ``model_file``
stage pinned by sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

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
    from compressdet._io import sha256_file

    if not results_json.is_file():
        raise SystemExit(f"{results_json}: not found; run benchmarks/imitation_gain.py first (its models are reused)")
    r = json.loads(results_json.read_text())
    teacher = Path(r["teacher"]["model"])
    if not teacher.is_file() or sha256_file(teacher) != r["teacher"]["sha256"]:
        raise SystemExit(f"{teacher}: the imitation benchmark's teacher is missing or changed; re-run "
                         "benchmarks/imitation_gain.py (--teacher-only retrains just the teacher; its cache is "
                         "under benchmarks/.imitation_gain)")
    return r


def _teacher_keys(r: dict) -> dict:
    return {"preset": r["preset"], "teacher": Path(r["teacher"]["model"]), "teacher_sha256": r["teacher"]["sha256"],
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


def imitation_artifacts(results_json: Path = RESULTS / "imitation_gain.json") -> dict:
    """Teacher and seed-0 imitation student (best weight) of the imitation benchmark's last run.

    Returns :func:`imitation_teacher`'s keys (the student settings read from the student's own
    recipe) plus ``"student", "student_sha256", "student_map40"``; exits with a one-line message when
    the benchmark has not been run.
    """
    from compressdet._io import sha256_file

    r = _checked_results(results_json)
    t = _teacher_keys(r)
    teacher = t["teacher"]
    runs = teacher.parents[2]  # runs/<teacher run>/teacher/model.pt
    best_w = t["best_weight"]
    chosen = (r.get("chosen") or {}).get("0.25x-I")
    prefix = f"I-lr{chosen['lr']}-w{best_w}-s0-" if chosen else f"I-w{best_w}-s0-"  # before the test-split protocol
    candidates = []  # (run folder, its recipe, its manifest) of seed-0 students of this teacher
    named = [Path(p).parents[1] for k, p in (r.get("student_models") or {}).items() if k.startswith(prefix)]
    for run in named or sorted(runs.glob(f"{prefix}*")):
        if not (run / "manifest.json").is_file():
            continue
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        pinned = [s.get("sha256") for s in recipe["stages"] if s.get("kind") == "model_file"]
        if r["teacher"]["sha256"] in pinned:
            candidates.append((run, recipe, json.loads((run / "manifest.json").read_text())))
    if not candidates:
        raise SystemExit(f"{runs}: no seed-0 student with weight {best_w} imitating teacher "
                         f"{r['teacher']['sha256'][:12]}; re-run benchmarks/imitation_gain.py")
    run, recipe, man = max(candidates, key=lambda c: (c[0] / "manifest.json").stat().st_mtime)
    rec = man["stages"]["student"]
    if rec.get("status") != "done":
        raise SystemExit(f"{run}: stage 'student' is not done ({rec.get('status')})")
    student = run / rec["artifacts"]["model"]["path"]
    sstage = next(s for s in recipe["stages"] if s["name"] == "student")
    return {**t, "student": student, "student_sha256": sha256_file(student), "data": recipe["data"],
            "eval_images": (sstage.get("eval") or {}).get("max_images"),
            "batch": sstage["schedule"]["batch_size"], "threads": sstage["schedule"].get("threads"),
            "channels_last": sstage["schedule"].get("channels_last", False),
            "student_map40": rec["metrics"].get("map40")}


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
        hits = [p for k, p in r["student_models"].items() if k.startswith(prefix)]
        if len(hits) != 1 or not Path(hits[0]).is_file():
            raise SystemExit(f"{results_json}: the seed-{seed} 0.25x-I student ({prefix}*) is missing; re-run "
                             "benchmarks/imitation_gain.py (its runs are cached)")
        students[seed] = Path(hits[0])
    hist = (r.get("eval_history") or {}).get("0.25x-I", {})
    return {**_teacher_keys(r), **student_settings(r["preset"]), "students": students,
            "student_history": {s: [tuple(x) for x in hist.get(str(s), [])] for s in students},
            "student_steps": r["steps"]["student"]}
