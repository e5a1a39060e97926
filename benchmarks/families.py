"""The first cross-family table: ShuffleDet 0.25x, the FCOS student and the RetinaNet student side by side.

One data set, input size and short schedule for all three families (the detector contract,
``compressdet/models/contract.py``, lets the same recipes train each), under the evidence protocol
(``benchmarks/_protocol.py``): nothing is selected but each run's best-on-val checkpoint, every
reported accuracy is measured once on the whole ``test`` split.

Per family (student / its teacher): ``shuffledet_0.25x`` / ``shuffledet_1x``, ``fcos_mnv3_small`` /
``fcos_mnv3_large``, ``retinanet_mnv3_small`` / ``retinanet_mnv3_large``:

1. the teacher, trained once and cached (ShuffleDet's is imitation_gain's teacher run: same recipe,
   same name, read from that benchmark's ledger when it holds it);
2. per paired seed two students at equal steps: no distillation, and ``distill: [{method: fgfi,
   weight: W}]`` from the family's teacher; lr and W are fixed preset values (no sweep), so the only
   selection is each run's checkpoint on val;
3. the paired difference distilled - none on test (``_protocol.claim``: per seed, mean, 95% t CI);
4. size and speed of the student: MACs and params (``model_summary``), ORT latency of its fastest
   exact fp32 graph (``_protocol.export_fast_fp32``: ShuffleDet's exact rewrites; the FPN families
   export as they are, no rewrite applies to them) and of the INT8 graph the recipe's ``ptq`` stage
   writes for the distilled seed-0 student, every graph timed in processes of its own
   (``_protocol.isolated_ms``); the INT8 graph's test mAP (ORT) too.

Writes ``families.{json,md}`` into ``--results`` (default ``benchmarks/results`` for ``cpu``; the
smoke preset writes under its work folder unless told, so checks never overwrite measured tables).
Every run is cached: killed, it resumes.

    python benchmarks/families.py --preset smoke   # the plumbing only: tiny data, a few steps
    python benchmarks/families.py --preset cpu     # a 2-core CPU budget, about 5-6 h (resumable)

``cpu`` preset: imitation_gain's cpu data (SynthKITTI from real KITTI layouts, 1,000 train / 500 val /
1,000 test, leak-free), input 192x624 (its reasons: a KITTI moderate object is >= 12.8 px tall),
batch 2, 2 threads, students without augmentation (as imitation_gain's, so ShuffleDet's row can be
read beside that benchmark's); teachers 12 passes over the training set (imitation_gain's teacher
schedule, so ShuffleDet's teacher is reused rather than trained for 57 min again), students 3 passes
(1,500 steps, the minimum imitation_gain argues for), 3 val evaluations per student. lr: ShuffleDet
students 0.01 (what imitation_gain's cpu preset chose on val for the 0.25x), its teacher the
schedule's 0.02 (imitation_gain's run); FCOS and RetinaNet 0.01 for teacher and students
(recipes/quickstart_fcos.yaml). W = 1.0 (FGFI's default) for every family. The time is an estimate
from 1-thread step times measured on the shared machine (students 0.4-0.5 s/step, the large teachers
about 1 s/step at 192x624, batch 2): about 1 h per FPN teacher, 8-12 min per student, 18 students.
No feature cache (imitation_gain's caches one ShuffleDet feature map; the FPN families imitate five).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:  # _protocol, imitation_gain when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import imitation_gain as ig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FAMILIES = {
    "shuffledet": {"student": "shuffledet_0.25x", "teacher": "shuffledet_1x"},
    "fcos": {"student": "fcos_mnv3_small", "teacher": "fcos_mnv3_large"},
    "retinanet": {"student": "retinanet_mnv3_small", "teacher": "retinanet_mnv3_large"},
}
ARMS = ("none", "distilled")

_IG_CPU = ig.PRESETS["cpu"]
# lr: {family: {"teacher": lr or None (the schedule's default, 0.02), "student": lr}}; weight: FGFI's W
PRESETS = {
    "smoke": {"data": copy.deepcopy(ig.PRESETS["smoke"]["data"]), "teacher_steps": 4, "student_steps": 3, "batch": 2,
              "seeds": [0, 1, 2], "device": "cpu", "threads": 1, "channels_last": True, "student_augment": False,
              "eval_images": None, "teacher_evals": 1, "student_evals": 2, "weight": 1.0,
              "lr": {"shuffledet": {"teacher": None, "student": 0.01}, "fcos": {"teacher": 0.01, "student": 0.01},
                     "retinanet": {"teacher": 0.01, "student": 0.01}},
              "calibration_images": 4, "latency_runs": 3, "latency_rounds": 1, "latency_threads": 1},
    # the teacher fields equal imitation_gain's cpu preset: its ShuffleDet teacher run has this recipe and name
    "cpu": {"data": copy.deepcopy(_IG_CPU["data"]), "teacher_passes": _IG_CPU["teacher_passes"], "student_passes": 3,
            "batch": _IG_CPU["batch"], "seeds": [0, 1, 2], "device": _IG_CPU["device"], "threads": _IG_CPU["threads"],
            "channels_last": _IG_CPU["channels_last"], "student_augment": _IG_CPU["student_augment"],
            "eval_images": _IG_CPU["eval_images"], "teacher_evals": _IG_CPU["teacher_evals"], "student_evals": 3,
            "weight": 1.0,
            "lr": {"shuffledet": {"teacher": None, "student": 0.01}, "fcos": {"teacher": 0.01, "student": 0.01},
                   "retinanet": {"teacher": 0.01, "student": 0.01}},
            "calibration_images": 64, "latency_runs": 50, "latency_rounds": 3, "latency_threads": 2},
}
DEFAULT_LR = 0.02  # ScheduleConfig.lr: what a stage without an lr trains with


def family_test_map(model_file: Path, data: dict, cache_dir: Path, family: str, *, kind: str = "torch",
                    float_model: Path | None = None, split: str = "test") -> dict:
    """``_protocol.test_map``; an FCOS / RetinaNet graph (``kind="ort"``) is decoded by the postprocessor
    of ``float_model``, the float detector it came from."""
    from _protocol import test_map

    fm = float_model if kind == "ort" and family != "shuffledet" else None
    return test_map(model_file, data, cache_dir, kind=kind, split=split, float_model=fm)


def family_entry(seeds: list[int], test: dict[str, dict[int, float]], **extra) -> dict:
    """A family's block of the results JSON from its per-seed test mAP40 (``test[arm][seed]``):
    the per-seed lists, means, and ``distill_vs_none`` (paired by seed)."""
    from _protocol import claim

    c = claim(test["distilled"], test["none"], seeds)
    return {"test_map40": {a: [test[a][s] for s in seeds] for a in ARMS},
            "test_map40_mean": {a: statistics.mean(test[a][s] for s in seeds) for a in ARMS},
            "distill_vs_none": c, **extra}


def _ms(v) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _per_seed(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})"


def _diff_cell(c: dict) -> str:
    lo, hi = c["ci95"]
    ci = "n/a" if lo is None or math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"
    return f"{c['mean']:+.2f} {ci}" + ("" if c.get("significant") else ", not significant")


def render_md(r: dict) -> str:
    """``families.md`` from the results JSON alone (so a table can be re-rendered without running)."""
    from compressdet.eval.stats import describe

    d, st, s = r["data"], r["steps"], r["settings"]
    md = [f"# Detector families ({r['preset']} preset)", "", f"`{r['command']}`", "",
          f"SynthKITTI, leak-free splits ({d['train_images']} train / {d['val_images']} val, every selection / "
          f"{d['test_images']} test, reported once), input {d['image_size'][0]}x{d['image_size'][1]} for every "
          f"family, batch {st['batch']}; teachers {st['teacher_steps']} steps ({st['teacher_passes']:.1f} passes), "
          f"students {st['student_steps']} steps ({st['student_passes']:.1f} passes) each; distilled = "
          f"`distill: [{{method: fgfi, weight: {s['weight']}}}]` from the family's teacher; seeds {r['seeds']} "
          f"(paired); every run's best-on-val checkpoint, evaluated once on test (mAP40, %).", "",
          "| family | student | MACs | params | ORT fp32 ms | ORT int8 ms | test mAP none: mean (per seed) | "
          "test mAP distilled: mean (per seed) | distilled - none (95% CI) | int8 test mAP (ORT) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for fam, e in r["families"].items():
        md.append(f"| {fam} | {e['student']} | {e['macs'] / 1e9:.3f} G | {e['params'] / 1e6:.3f} M | "
                  f"{_ms(e['ort_fp32_ms'])} | {_ms(e['ort_int8_ms'])} | {_per_seed(e['test_map40']['none'])} | "
                  f"{_per_seed(e['test_map40']['distilled'])} | {_diff_cell(e['distill_vs_none'])} | "
                  f"{e['int8']['test_map40_ort']:.2f} |")
    md += ["", "Paired difference distilled - none on test, per family:", ""]
    md += [f"- {fam}: {describe(e['distill_vs_none'])}" for fam, e in r["families"].items()]
    md += ["", "Teachers (trained once, best-on-val checkpoint):", ""]
    md += [f"- {fam}: {e['teacher']['arch']} ({e['teacher']['macs'] / 1e9:.3f} G MACs), lr {e['teacher']['lr']}, "
           f"val mAP40 {e['teacher']['val_map40']:.2f}, test mAP40 {e['teacher']['test_map40']:.2f}"
           for fam, e in r["families"].items()]
    lat = r["latency"]
    lrs = ", ".join(f"{f} {e['lr']}" for f, e in r["families"].items())
    md += ["", f"- lr (students): {lrs}; fixed, no sweep",
           "- MACs: the whole network (backbone + FPN + head; ShuffleDet's seed tables count the backbone "
           "only), params without BN statistics; at the benchmark's input, batch 1",
           f"- latency: {lat['note']}",
           f"- int8: {r['int8_note']}"]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".families")
    ap.add_argument("--results", type=Path, help="where families.{json,md} go (default: benchmarks/results for cpu, "
                    "<work>/smoke/results for smoke)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ", ".join(FAMILIES))
    ap.add_argument("--ledger", type=Path, help="committed record of finished runs (default: "
                    "benchmarks/ledger/families/<preset> for cpu, none for smoke)")
    ap.add_argument("--no-ledger", action="store_true", help="neither read nor write the ledgers")
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        ap.error(f"--families: unknown {unknown} (known: {', '.join(FAMILIES)})")
    p = copy.deepcopy(PRESETS[args.preset])

    import torch
    from _protocol import export_fast_fp32, isolated_ms, protocol_keys

    from compressdet._io import atomic_write_json, atomic_write_text, sha256_file
    from compressdet.data import build_dataset, prepare_data
    from compressdet.data.synth import synth_key
    from compressdet.models import build_model, load_model
    from compressdet.models.summary import count_params, model_summary
    from compressdet.recipe import DataConfig

    t_start = time.perf_counter()
    torch.set_num_threads(p["threads"])
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.results or (RESULTS if args.preset != "smoke" else work / "results")
    ledger = ig.bench_ledger("families", args)
    # ShuffleDet's teacher is imitation_gain's run: read (never written) from that benchmark's ledger
    ig_ledger = ig.Ledger.for_bench("imitation_gain", args.preset,
                                    enabled=ledger.root is not None and args.ledger is None)
    test_dir = ledger.test_dir or work / "test_eval"
    seeds, s0 = p["seeds"], p["seeds"][0]
    hw = tuple(p["data"]["image_size"])

    s_data = ig._data(p, True)
    s_cfg = DataConfig(**s_data)
    prepare_data(s_cfg)
    n = {split: len(build_dataset(s_cfg, split, train=split == "train")) for split in ("train", "val", "test")}
    data_hash = synth_key(s_cfg.synth) if s_cfg.format == "synth" else ig._digest(s_cfg.model_dump(mode="json"))
    plan = ig.plan_steps(p, n["train"])
    base = {"seed": 0, "device": p["device"]}
    ev = {"batch_size": 16, "num_images_logged": 0, **({"max_images": p["eval_images"]} if p["eval_images"] else {})}
    print(f"plan: families {families}; teachers {plan['teacher_steps']} steps, students {plan['student_steps']} steps, "
          f"batch {p['batch']}; {n['train']} train / {n['val']} val / {n['test']} test images", flush=True)

    def named(prefix: str, recipe: dict) -> dict:
        """The recipe with a name that digests it and the data; a pinned model file counts by its sha256, not
        its path (which moves with the checkout or the ledger's store), so a ledger still finds the run."""
        key = {**recipe, "stages": [{k: v for k, v in st.items() if not (st.get("kind") == "model_file" and k == "path")}
                                    for st in recipe["stages"]]}
        return {**recipe, "name": f"{prefix}-{ig._digest({'recipe': key, 'data_hash': data_hash})}"}

    def teacher(fam: str) -> tuple[dict, Path]:
        lr = p["lr"][fam]["teacher"]
        recipe = named("teacher", {**base, "data": ig._data(p, False), "stages": [ig._stage(
            "teacher", FAMILIES[fam]["teacher"], plan["teacher_steps"], p, p["teacher_evals"], lr=lr)]})
        man = ig_ledger.get(recipe["name"], work / "runs" / recipe["name"]) if fam == "shuffledet" else None
        if man is not None:
            return man, ig.model_file(work, man, "teacher", ig_ledger)
        man = ig._run(recipe, work, ledger)
        return man, ig.model_file(work, man, "teacher", ledger)

    def student(fam: str, arm: str, seed: int, tfile: Path) -> dict:
        st = ig._stage("student", FAMILIES[fam]["student"], plan["student_steps"], p, p["student_evals"],
                       lr=p["lr"][fam]["student"])
        stages = []
        if arm == "distilled":
            stages.append({"name": "teacher", "kind": "model_file", "path": str(tfile), "sha256": sha256_file(tfile)})
            st.update(teacher="teacher", distill=[{"method": "fgfi", "weight": p["weight"]}])
        recipe = named(f"{fam}-{arm}-s{seed}", {**base, "seed": seed, "data": s_data, "stages": stages + [st]})
        man = ig._run(recipe, work, ledger)
        mfile = ig.model_file(work, man, "student", ledger)
        return {"run": recipe["name"], "model": mfile, "val": man["stages"]["student"]["metrics"],
                "test": family_test_map(mfile, s_data, test_dir, fam),
                "wall_s": sum(r.get("wall_time_s", 0.0) for r in man["stages"].values())}

    def ptq(fam: str, sfile: Path) -> dict:
        stages = [{"name": "student", "kind": "model_file", "path": str(sfile), "sha256": sha256_file(sfile)},
                  {"name": "ptq", "kind": "ptq", "from": "student", "calibration_draw": "random",
                   "quant": {"calibration_images": p["calibration_images"]}, "eval": ev}]
        recipe = named(f"{fam}-ptq", {**base, "seed": s0, "data": s_data, "stages": stages})
        man = ig._run(recipe, work, ledger)
        onnx = ig.model_file(work, man, "ptq", ledger, "onnx_int8")
        m = man["stages"]["ptq"]["metrics"]
        return {"run": recipe["name"], "onnx": onnx, "val_map40": m.get("map40"), "val_ort_map40": m.get("ort_map40"),
                "calibration_images": m.get("calibration_images"),
                "test": family_test_map(onnx, s_data, test_dir, fam, kind="ort", float_model=sfile)}

    fam_out: dict[str, dict] = {}
    graphs: dict[str, Path] = {}
    student_s = 0.0
    for fam in families:
        arch = FAMILIES[fam]
        tman, tfile = teacher(fam)
        trec = tman["stages"]["teacher"]
        t_test = family_test_map(tfile, s_data, test_dir, fam)
        runs = {a: {sd: student(fam, a, sd, tfile) for sd in seeds} for a in ARMS}
        student_s += sum(r["wall_s"] for by in runs.values() for r in by.values())
        q = ptq(fam, runs["distilled"][s0]["model"])
        # fp32 graph of the same model the int8 graph was quantized from, named by its sha256 (exported once)
        sfile = runs["distilled"][s0]["model"]
        fp32 = work / "onnx" / f"{fam}-{sha256_file(sfile)[:12]}-{hw[0]}x{hw[1]}.onnx"
        info = fp32.with_suffix(".json")  # the exporter's rewrites, written after the graph
        if not (fp32.is_file() and info.is_file()):
            model, _ = load_model(sfile)
            atomic_write_json(info, {"fp32_rewrites": export_fast_fp32(model.eval(), fp32, hw).get("fp32_rewrites")})
        rewrites = json.loads(info.read_text())["fp32_rewrites"]
        graphs[f"{fam}/fp32"], graphs[f"{fam}/int8"] = fp32, q["onnx"]
        summ = model_summary(build_model(arch["student"], image_size=hw), hw)
        t_summ = model_summary(build_model(arch["teacher"], image_size=hw), hw)
        test = {a: {sd: r["test"]["map40"] for sd, r in by.items()} for a, by in runs.items()}
        fam_out[fam] = family_entry(
            seeds, test, student=arch["student"],
            macs=summ["macs"]["total"], macs_backbone=summ["macs"]["backbone"],
            params=summ["params"]["total"], params_with_bn_stats=summ["params_with_bn_stats"]["total"],
            lr=p["lr"][fam]["student"], weight=p["weight"],
            val_map40={a: [runs[a][sd]["val"]["map40"] for sd in seeds] for a in ARMS},
            best_step={a: [runs[a][sd]["val"].get("best_step") for sd in seeds] for a in ARMS},
            teacher={"arch": arch["teacher"], "run": tman["recipe"], "model": ig.rel_to_root(tfile),
                     "sha256": sha256_file(tfile), "lr": p["lr"][fam]["teacher"] or DEFAULT_LR,
                     "macs": t_summ["macs"]["total"], "params": count_params(build_model(arch["teacher"],
                                                                                         image_size=hw))["params"],
                     "val_map40": trec["metrics"]["map40"], "test_map40": t_test["map40"], "test": t_test},
            int8={"from": f"distilled seed {s0}", "run": q["run"], "onnx": ig.rel_to_root(q["onnx"]),
                  "test_map40_ort": q["test"]["map40"], "val_map40_torch": q["val_map40"],
                  "val_map40_ort": q["val_ort_map40"], "calibration_images": q["calibration_images"]},
            fp32_onnx=ig.rel_to_root(fp32), fp32_rewrites=rewrites,
            runs={a: [runs[a][sd]["run"] for sd in seeds] for a in ARMS},
            student_models={a: [ig.rel_to_root(runs[a][sd]["model"]) for sd in seeds] for a in ARMS})

    # all graphs in one isolated comparison: each in processes of its own, alternating over rounds
    ms = isolated_ms(graphs, work / "latency", runs=p["latency_runs"], threads=p["latency_threads"],
                     rounds=p["latency_rounds"])
    for fam, e in fam_out.items():
        fp, i8 = ms[f"{fam}/fp32"], ms[f"{fam}/int8"]
        e.update(ort_fp32_ms=fp["median_ms"], ort_int8_ms=i8["median_ms"], latency={"fp32": fp, "int8": i8},
                 int8_speedup=fp["median_ms"] / i8["median_ms"])

    subset = "" if families == list(FAMILIES) else f" --families {','.join(families)}"
    result = {
        "preset": args.preset, **protocol_keys(seeds),
        "command": f"python benchmarks/families.py --preset {args.preset}{subset}",
        "map_metric": "official KITTI AP40, mAP over car/pedestrian/cyclist x E/M/H (%)",
        "data": {"train_images": n["train"], "val_images": n["val"], "test_images": n["test"], "data_hash": data_hash,
                 "image_size": list(hw), "student_augment": p["student_augment"], "synth": p["data"].get("synth")},
        "steps": {**plan, "batch": p["batch"], "teacher_evals": p["teacher_evals"], "student_evals": p["student_evals"]},
        "settings": {"weight": p["weight"], "distill": [{"method": "fgfi", "weight": p["weight"]}],
                     "lr": {f: {"teacher": p["lr"][f]["teacher"] or DEFAULT_LR, "student": p["lr"][f]["student"]}
                            for f in families},
                     "selection": "none beyond each run's best-on-val checkpoint (lr and weight fixed by the preset)",
                     "calibration_images": p["calibration_images"], "threads": p["threads"]},
        "latency": {"timer": "isolated_process", "runs": p["latency_runs"], "rounds": p["latency_rounds"],
                    "threads": p["latency_threads"], "batch": 1, "image_size": list(hw),
                    "note": (f"ONNX Runtime CPU, batch 1 at {hw[0]}x{hw[1]}, median of {p['latency_runs']} runs "
                             f"over {p['latency_rounds']} round(s), {p['latency_threads']} thread(s), each graph in "
                             "a process of its own, graphs alternating (_protocol.isolated_ms); fp32 = the fastest "
                             "exact fp32 export (_protocol.export_fast_fp32; ShuffleDet's exact rewrites, none applies "
                             f"to the FPN families) of the distilled seed-{s0} student, int8 = its ptq stage's QDQ "
                             "graph")},
        "int8_note": (f"the recipe's ptq stage (PT2E, histogram observer, {p['calibration_images']} random train "
                      f"images) on the distilled seed-{s0} student; test mAP40 of its onnx_int8 graph in ONNX Runtime, "
                      "decoded by the float model's postprocessor"),
        "families": fam_out,
        "student_minutes": student_s / 60, "total_minutes_this_invocation": (time.perf_counter() - t_start) / 60,
        "ledger": ({"path": ig.rel_to_root(ledger.root), "runs": ledger.entries()} if ledger.root else None),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "families.json", result)
    md = render_md(result)
    atomic_write_text(out_dir / "families.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
