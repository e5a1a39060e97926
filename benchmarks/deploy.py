"""Deploy at the CPU's speed limit (issue #40): what ``compressdet deploy`` chooses for the trained students
and teachers of every family, at the run size and the seed's size, and how much faster than exact fp32.

Per (model, input size): a recipe ``model_file`` (the model rebuilt at that size, same weights:
``compressdet.deploy.model_at_size``) -> ``ptq`` (the run's own INT8 QDQ graph, 64 random train images)
-> ``deploy`` (``split: test``: the models were chosen on val; ``max_map_drop: 0.5``). The deploy stage
measures ORT fp32, OpenVINO f32, OpenVINO's default precision (bf16 where the CPU has it), ORT and
OpenVINO INT8 of the QDQ graph and OpenVINO INT8 by NNCF PTQ of the fp32 IR, each candidate's latency
in processes of its own over alternating rounds, each one's test mAP, and keeps the fastest within
the tolerance. Per (model, size) the JSON holds ``candidates``, ``chosen``, ``speedup_vs_best_exact_fp32``,
``speedup_vs_openvino_default`` and ``map_drop``.

Goals (the 0.25x-I ShuffleDet student and the FCOS student, both sizes): chosen >= 2.5x the fastest exact
fp32 candidate and >= 1.5x OpenVINO's default, within 0.5 mAP of fp32 on test.

Models: ``cpu`` reads ``benchmarks/results/families.json`` (the distilled seed-0 student and the teacher
of each family; run ``python benchmarks/families.py --preset cpu`` first, which restores them from the
ledgers); ``smoke`` deploys the shipped ShuffleDet assets at 64x192 on a tiny SynthKITTI (the plumbing
only). Every (model, size) is a recipe run named by a digest of the recipe and the data: in the
committed ledger (``benchmarks/ledger/deploy/cpu``) with its manifest (the deploy stage's meta holds
the whole comparison), so a killed invocation resumes and a finished one is read back, not re-timed.

    python benchmarks/deploy.py --preset smoke
    python benchmarks/deploy.py --preset cpu      # needs a quiet machine: latency is the measurement
    python benchmarks/deploy.py --preset cpu --families shuffledet   # one family while the others wait
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import imitation_gain as ig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GOAL_MODELS = ("shuffledet/student", "fcos/student")
GOALS = {"speedup_vs_best_exact_fp32": 2.5, "speedup_vs_openvino_default": 1.5, "max_map_drop": 0.5}

PRESETS = {
    "smoke": {"sizes": [[64, 192]], "calibration_images": 2, "nncf_images": 2, "runs": 2, "rounds": 1, "warmup": 1,
              "threads": 1, "max_map_drop": 0.5, "families": ["shuffledet"]},
    "cpu": {"sizes": [[192, 624], [384, 1248]], "calibration_images": 64, "nncf_images": 64, "runs": 60, "rounds": 3,
            "warmup": 5, "threads": 2, "max_map_drop": 0.5, "families": ["shuffledet", "fcos", "retinanet"]},
}

#: smoke: the shipped models (no training; the plumbing only)
SMOKE_MODELS = {"shuffledet/student": "asset:shuffledet_0.25x_imitated_synthkitti",
                "shuffledet/teacher": "asset:shuffledet_1x_synthkitti"}


def models(preset: str, families: list[str]) -> dict[str, Path]:
    """``{"<family>/<student|teacher>": model file}``."""
    from _ledger import remade_here

    from compressdet.assets import resolve_model_path

    if preset == "smoke":
        return {k: resolve_model_path(v) for k, v in SMOKE_MODELS.items() if k.split("/")[0] in families}
    fam_json = RESULTS / "families.json"
    if not fam_json.is_file():
        raise SystemExit(f"{fam_json} missing: run python benchmarks/families.py --preset cpu first")
    fams = json.loads(fam_json.read_text())["families"]
    out: dict[str, Path] = {}
    for fam in families:
        e = fams.get(fam)
        if e is None:
            raise SystemExit(f"{fam_json}: no '{fam}' family; run python benchmarks/families.py --preset cpu")
        # the recorded models, or this CPU platform's re-makes of them (the ledger keeps both)
        out[f"{fam}/student"] = remade_here(ROOT / e["student_models"]["distilled"][0])
        out[f"{fam}/teacher"] = remade_here(ROOT / e["teacher"]["model"])
    missing = [f"{k}: {p}" for k, p in out.items() if not p.is_file()]
    if missing:
        raise SystemExit("model files missing (python benchmarks/families.py --preset cpu restores them from the "
                         f"ledgers): {'; '.join(missing)}")
    return out


def model_at(path: Path, hw: tuple[int, int], folder: Path) -> Path:
    """The model file rebuilt for input ``hw`` (same weights), named by the source's sha256: made once."""
    from compressdet._io import sha256_file
    from compressdet.deploy.runner import model_at_size
    from compressdet.models import load_model, save_model

    out = folder / f"{path.stem}-{sha256_file(path)[:12]}-{hw[0]}x{hw[1]}.pt"
    if not out.is_file():
        model, meta = load_model(path)
        save_model(model_at_size(model, hw), out, meta={k: v for k, v in meta.items() if k != "stored_dtype"})
    return out


def recipe_for(model: Path, hw: tuple[int, int], data: dict, p: dict, data_hash: str) -> dict:
    """model_file -> ptq -> deploy on the test split; named by a digest of the recipe (the model by its
    sha256, not its path) and the data."""
    from compressdet._io import sha256_file

    stages = [{"name": "model", "kind": "model_file", "path": str(model), "sha256": sha256_file(model)},
              {"name": "int8", "kind": "ptq", "from": "model", "calibration_draw": "random",
               "quant": {"calibration_images": p["calibration_images"]}, "eval": {"batch_size": 16}},
              {"name": "deploy", "kind": "deploy", "from": "int8", "split": "test", "max_map_drop": p["max_map_drop"],
               "runs": p["runs"], "rounds": p["rounds"], "warmup": p["warmup"], "threads": p["threads"],
               "calibration_images": p["nncf_images"], "eval": {"batch_size": 16}}]
    recipe = {"seed": 0, "device": "cpu", "data": {**data, "image_size": list(hw)}, "stages": stages}
    key = {**recipe, "stages": [{k: v for k, v in s.items() if k != "path"} for s in stages]}
    return {**recipe, "name": f"deploy-{hw[0]}x{hw[1]}-{ig._digest({'recipe': key, 'data_hash': data_hash})}"}


def entry(man: dict) -> dict:
    """A (model, size) block of the results JSON from the run's manifest (the deploy stage's record)."""
    st = man["stages"]["deploy"]
    meta, m = st["meta"], st["metrics"]
    return {"run": man["recipe"], "candidates": meta["candidates"], "chosen": m["chosen"],
            "speedup_vs_best_exact_fp32": m["speedup_vs_best_exact_fp32"],
            "speedup_vs_openvino_default": m["speedup_vs_openvino_default"], "map_drop": m["map_drop"],
            "best_exact_fp32": meta.get("best_exact_fp32"), "reference": meta["reference"],
            "summary": meta["summary"], "cpu": meta.get("cpu"), "versions": meta.get("versions")}


def goals(results: dict) -> dict:
    """Per goal model and size: whether the chosen candidate meets each goal."""
    out = {}
    for key, e in results.items():
        if key.split("@")[0] not in GOAL_MODELS:
            continue
        fp, ov, drop = e["speedup_vs_best_exact_fp32"], e["speedup_vs_openvino_default"], e["map_drop"]
        out[key] = {"vs_exact_fp32": fp is not None and fp >= GOALS["speedup_vs_best_exact_fp32"],
                    "vs_openvino_default": ov is not None and ov >= GOALS["speedup_vs_openvino_default"],
                    "map_drop": drop is not None and drop <= GOALS["max_map_drop"]}
    return out


def _drop(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def render_md(r: dict) -> str:
    md = [f"# Deploy: the fastest runtime and precision within {r['settings']['max_map_drop']} mAP ({r['preset']} "
          "preset)", "", f"`{r['command']}`; {r['cpu']}", "",
          f"Latency: batch 1, median of {r['settings']['runs']} runs over {r['settings']['rounds']} rounds, "
          f"{r['settings']['threads']} threads, each candidate in processes of its own, alternating. Accuracy: "
          "test-split mAP40 (%), drop = PyTorch fp32 minus the candidate.", ""]
    if not r.get("complete", True):
        md += [f"Partial: families {', '.join(r['families'])} only (the others' models are not remade yet); "
               "the whole table comes from the command without `--families`.", ""]
    md += ["| model @ size | " + " | ".join(r["candidate_names"]) + " | chosen | vs exact fp32 | vs OpenVINO "
           "default | mAP drop |", "|---|" + "---|" * (len(r["candidate_names"]) + 4)]
    for key, e in r["results"].items():
        by = {c["name"]: c for c in e["candidates"]}
        cells = []
        for n in r["candidate_names"]:
            c = by.get(n, {})
            lat = (c.get("latency") or {}).get("median_ms")
            cell = "-" if lat is None else f"{lat:.1f} ms, {c.get('precision')}, {c.get('map_drop', 0):+.2f}"
            cells.append(f"**{cell}**" if n == e["chosen"] else cell)
        md.append(f"| {key} | " + " | ".join(cells) + f" | {e['chosen']} | {_x(e['speedup_vs_best_exact_fp32'])} | "
                  f"{_x(e['speedup_vs_openvino_default'])} | {_drop(e['map_drop'])} |")
    md += ["", "Goals (chosen >= 2.5x the fastest exact fp32 and >= 1.5x OpenVINO's default, within 0.5 mAP):", ""]
    md += [f"- {k}: {v}" for k, v in r["goals"].items()]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".deploy")
    ap.add_argument("--results", type=Path, help="where deploy.{json,md} go (default: benchmarks/results for cpu, "
                    "<work>/smoke/results for smoke)")
    ap.add_argument("--ledger", type=Path, help="committed record of finished runs (default: "
                    "benchmarks/ledger/deploy/<preset> for cpu, none for smoke)")
    ap.add_argument("--no-ledger", action="store_true", help="neither read nor write the ledger")
    ap.add_argument("--families", help="comma-separated subset of the preset's families (default: all of them); "
                    "a family whose models are not remade yet can wait while the others are measured")
    args = ap.parse_args(argv)
    p = copy.deepcopy(PRESETS[args.preset])
    if args.families:
        asked = [f.strip() for f in args.families.split(",") if f.strip()]
        unknown = [f for f in asked if f not in p["families"]]
        if unknown or not asked:
            ap.error(f"--families: expected a comma-separated subset of {', '.join(p['families'])}, got "
                     f"{args.families!r}")
        p["families"] = [f for f in p["families"] if f in asked]

    from compressdet._io import atomic_write_json, atomic_write_text
    from compressdet.deploy.runner import CANDIDATE_NAMES
    from compressdet.recipe import DataConfig

    t0 = time.perf_counter()
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.results or (RESULTS if args.preset != "smoke" else work / "results")
    ledger = ig.bench_ledger("deploy", args)
    data = ig._data(ig.PRESETS[args.preset], True)
    data_hash = ig.data_hash_of(DataConfig(**data))
    results: dict[str, dict] = {}
    for label, path in models(args.preset, p["families"]).items():
        for hw in p["sizes"]:
            hw = tuple(hw)
            recipe = recipe_for(model_at(path, hw, work / "models"), hw, data, p, data_hash)
            print(f"{label} @ {hw[0]}x{hw[1]}: run {recipe['name']}", flush=True)
            results[f"{label}@{hw[0]}x{hw[1]}"] = entry(ig._run(recipe, work, ledger))
    first = next(iter(results.values()))
    complete = p["families"] == PRESETS[args.preset]["families"]
    command = f"python benchmarks/deploy.py --preset {args.preset}" + (
        "" if complete else f" --families {','.join(p['families'])}")
    res = {"preset": args.preset, "command": command, "families": p["families"], "complete": complete,
           "cpu": first.get("cpu"), "versions": first.get("versions"),
           "settings": {k: p[k] for k in ("sizes", "calibration_images", "nncf_images", "runs", "rounds", "warmup",
                                          "threads", "max_map_drop")},
           "split": "test", "map_key": "map40", "candidate_names": [n for n in CANDIDATE_NAMES
                                                                    if not n.startswith("tensorrt")],
           "results": results, "goals": goals(results), "goal_thresholds": GOALS,
           "minutes_this_invocation": (time.perf_counter() - t0) / 60,
           "ledger": ({"path": ig.rel_to_root(ledger.root), "runs": ledger.entries()} if ledger.root else None)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "deploy.json", res)
    md = render_md(res)
    atomic_write_text(out_dir / "deploy.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
