"""The first cross-family table: ShuffleDet 0.25x, the FCOS student and the RetinaNet student side by side.

One data set, input size and short schedule for all three families (the detector contract,
``compressdet/models/contract.py``, lets the same recipes train each), under the evidence protocol
(``benchmarks/_protocol.py``): nothing is selected but each run's best-on-val checkpoint, every
reported accuracy is measured once on the whole ``test`` split.

Per family (student / its teacher, ``distill_methods.FAMILIES``): ``shuffledet_0.25x`` / ``shuffledet_1x``,
``fcos_mnv2_050`` / ``fcos_mnv3_large``, ``retinanet_mnv2_050`` / ``retinanet_mnv3_large`` (the FPN
students on MobileNetV2 x0.5, whose int8 graphs are the ones INT8 speeds up; benchmarks/fpn_speed.py):

1. the teacher, trained once: imitation_gain's ShuffleDet teacher, distill_methods' FCOS / RetinaNet
   teacher (``distill_methods.TEACHER_LR``), the very runs those benchmarks make;
2. per paired seed two students at equal steps: no distillation, and FGFI (``imitation: {weight: W}``)
   from the family's teacher; these are imitation_gain's / distill_methods' ``base-lr{lr}`` and
   ``I-lr{lr}-w{W}`` runs (``imitation_gain.student_runner``: same preset, same names), so whichever
   benchmark runs first trains them and the others read them from the run folder or the committed
   ledger. lr and W are fixed preset values here (no sweep), so the only selection is each run's
   checkpoint on val;
3. the paired difference distilled - none on test (``_protocol.claim``: per seed, mean, 95% t CI);
4. size and speed of the student: MACs and params (``model_summary``), ORT latency of its fastest
   exact fp32 graph (``_protocol.export_fast_fp32``: ShuffleDet's exact rewrites; the FPN families
   export as they are, no rewrite applies to them) and of the INT8 graph the recipe's ``ptq`` stage
   writes for the distilled seed-0 student, every graph timed in processes of its own
   (``_protocol.isolated_ms``); the INT8 graph's test mAP (ORT) too.

Writes ``families.{json,md}`` into ``--results`` (default ``benchmarks/results`` for ``cpu``; the
smoke preset writes under its work folder unless told, so checks never overwrite measured tables);
``--families`` with a subset writes ``families-<subset>.{json,md}`` there instead of the whole table.
Every run is cached: killed, it resumes.

    python benchmarks/families.py --preset smoke   # the plumbing only: tiny data, a few steps
    python benchmarks/families.py --preset cpu     # hours on 2 cores, shared with the other benchmarks (resumable)

``cpu`` preset: imitation_gain's cpu preset for data and schedule (SynthKITTI from real KITTI layouts,
1,000 train / 500 val / 1,000 test, leak-free; input 192x624; batch 2, 2 threads; students without
augmentation, 3 passes = 1,500 steps, 6 val evaluations; teachers 12 passes). lr: every student 0.01
(what imitation_gain's cpu preset chose on val for the 0.25x); teachers as ``distill_methods.TEACHER_LR``
(ShuffleDet 0.02, the FPN families 0.01 as recipes/quickstart_fcos.yaml). W = 1.0 (FGFI's default).
Alone, about 1 h per FPN teacher and 8-15 min per student (18 students; measured before the FPN
teacher cache); most of it is shared with imitation_gain and ``distill_methods --family fcos``.
The teacher-feature cache of imitation_gain serves every family (the FPN teachers' five levels and
raw outputs kept as one row per image): within one invocation a teacher runs once per training
image, not once per step.
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

import distill_methods as dm  # noqa: E402
import imitation_gain as ig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FAMILIES = {f: {"student": s, "teacher": t} for f, (t, s) in dm.FAMILIES.items()}
ARMS = ("none", "distilled")

# Teachers and students train on imitation_gain's preset of the same name (data, steps, evaluations,
# threads): a run here is the very run imitation_gain (ShuffleDet) or distill_methods (FPN families)
# makes, found in their run folders or ledgers, so nothing is trained twice. Fixed here: each
# family's student lr, FGFI's weight W, and the INT8 / latency settings.
PRESETS = {
    "smoke": {"lr": {"shuffledet": 0.01, "fcos": 0.01, "retinanet": 0.01}, "weight": 1.0,
              "calibration_images": 4, "latency_runs": 3, "latency_rounds": 1, "latency_threads": 1},
    "cpu": {"lr": {"shuffledet": 0.01, "fcos": 0.01, "retinanet": 0.01}, "weight": 1.0,
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


def _block_extras(e: dict) -> str:
    """`` (anchor_scale 2, head v2)``: a family's model-block settings beyond the name (teacher and
    student share them)."""
    block = e.get("model_blocks", {}).get("teacher")
    if not isinstance(block, dict):
        return ""
    extras = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in block.items() if k != "arch"]
    return f" ({', '.join(extras)}, student too)" if extras else ""


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
    md += [f"- {fam}: {e['teacher']['arch']}{_block_extras(e)} ({e['teacher']['macs'] / 1e9:.3f} G MACs), "
           f"lr {e['teacher']['lr']}, "
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


def results_stem(families: list[str], *, told: bool) -> str:
    """``families`` for the whole table; a subset written to the default folder goes beside it, never over
    it (its latencies come from another timing session, and deploy / pareto read every family's models
    from families.json)."""
    return "families" if told or families == list(FAMILIES) else f"families-{'-'.join(families)}"


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
    sp = copy.deepcopy(ig.PRESETS[args.preset])  # the shared schedule: imitation_gain's preset, unchanged

    import torch
    from _protocol import export_fast_fp32, isolated_ms, protocol_keys

    from compressdet._io import atomic_write_json, atomic_write_text, sha256_file
    from compressdet.data import build_dataset, prepare_data
    from compressdet.models import build_model, load_model
    from compressdet.models.summary import count_params, model_summary
    from compressdet.recipe import DataConfig

    t_start = time.perf_counter()
    torch.set_num_threads(sp["threads"] or 1)
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.results or (RESULTS if args.preset != "smoke" else work / "results")
    ledger = ig.bench_ledger("families", args)
    # teachers and students are imitation_gain's (ShuffleDet) and distill_methods' (FPN) runs: with the
    # committed ledgers, in their work folder and recorded in their ledgers; a check run (--ledger,
    # --no-ledger, smoke) keeps everything in its own work folder and ledger
    shared = ledger.root is not None and args.ledger is None
    run_work = ROOT / "benchmarks" / ".imitation_gain" / args.preset if shared else work
    owners = {fam: ig.Ledger.for_bench("imitation_gain" if fam == "shuffledet" else "distill_methods", args.preset)
              if shared else ledger for fam in FAMILIES}
    test_dir = ledger.test_dir or work / "test_eval"
    seeds, s0 = sp["seeds"], sp["seeds"][0]
    hw = tuple(sp["data"]["image_size"])

    s_data = ig._data(sp, True)
    s_cfg = DataConfig(**s_data)
    prepare_data(s_cfg)
    n = {split: len(build_dataset(s_cfg, split, train=split == "train")) for split in ("train", "val", "test")}
    data_hash = ig.data_hash_of(s_cfg)
    plan = ig.plan_steps(sp, n["train"])
    blocks = {fam: dm.model_blocks(fam, s_cfg) for fam in families}  # distill_methods' recipes exactly
    base = {"seed": 0, "device": sp["device"]}
    ev = {"batch_size": 16, "num_images_logged": 0, **({"max_images": sp["eval_images"]} if sp["eval_images"] else {})}
    print(f"plan: families {families}; teachers {plan['teacher_steps']} steps, students {plan['student_steps']} steps, "
          f"batch {sp['batch']}; {n['train']} train / {n['val']} val / {n['test']} test images", flush=True)

    def named(prefix: str, recipe: dict) -> dict:
        """The recipe with a name that digests it and the data; a pinned model file counts by its sha256, not
        its path (which moves with the checkout or the ledger's store), so a ledger still finds the run."""
        key = {**recipe, "stages": [{k: v for k, v in st.items() if not (st.get("kind") == "model_file" and k == "path")}
                                    for st in recipe["stages"]]}
        return {**recipe, "name": f"{prefix}-{ig._digest({'recipe': key, 'data_hash': data_hash})}"}

    def teacher(fam: str) -> tuple[dict, Path, str]:
        """imitation_gain's / distill_methods' teacher run of the family (same recipe, same name)."""
        recipe = ig.make_teacher_recipe(sp, blocks[fam][0], plan["teacher_steps"], data_hash,
                                        lr=dm.TEACHER_LR[fam])
        man = ig._run(recipe, run_work, owners[fam])
        return man, ig.model_file(run_work, man, "teacher", owners[fam]), recipe["name"].removeprefix("teacher-")

    def students(fam: str, tfile: Path, tkey: str) -> dict[str, dict[int, dict]]:
        """The none / distilled students of every seed: imitation_gain's and distill_methods' ``base-lr{lr}``
        and ``I-lr{lr}-w{W}`` runs (``imitation: {weight: W}``, i.e. FGFI)."""
        runner = ig.student_runner(run_work, sp, n["train"], tkey, test_dir=owners[fam].test_dir or run_work / "test_eval",
                                   ledger=owners[fam], arch=blocks[fam][1])
        lr, w = p["lr"][fam], p["weight"]
        with ig.teacher_feature_cache(run_work / "feature_cache", n["train"],
                                      enabled=sp["feature_cache"]):
            # distilled first: deploy and pareto build on the distilled students, so a session-sized part
            # (COMPRESSDET_BENCH_MINUTES) remakes those before the undistilled controls
            distilled = {sd: runner.run(f"I-lr{lr}-w{w}", sd, lr, w, tfile) for sd in seeds}
            return {"none": {sd: runner.run(f"base-lr{lr}", sd, lr, 0.0, None) for sd in seeds},
                    "distilled": distilled}

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
        tman, tfile, tkey = teacher(fam)
        trec = tman["stages"]["teacher"]
        t_test = family_test_map(tfile, s_data, test_dir, fam)
        runs = students(fam, tfile, tkey)
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
            model_blocks={"teacher": blocks[fam][0], "student": blocks[fam][1]},  # RetinaNet: + its anchor scale
            macs=summ["macs"]["total"], macs_backbone=summ["macs"]["backbone"],
            params=summ["params"]["total"], params_with_bn_stats=summ["params_with_bn_stats"]["total"],
            lr=p["lr"][fam], weight=p["weight"],
            val_map40={a: [runs[a][sd]["val"]["map40"] for sd in seeds] for a in ARMS},
            best_step={a: [runs[a][sd]["val"].get("best_step") for sd in seeds] for a in ARMS},
            teacher={"arch": arch["teacher"], "run": tman["recipe"], "model": ig.rel_to_root(tfile),
                     "sha256": sha256_file(tfile), "lr": dm.TEACHER_LR[fam] or DEFAULT_LR,
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
                 "image_size": list(hw), "student_augment": sp["student_augment"], "synth": sp["data"].get("synth")},
        "steps": {**plan, "batch": sp["batch"], "teacher_evals": sp["teacher_evals"],
                  "student_evals": sp["student_evals"]},
        "settings": {"weight": p["weight"], "distill": [{"method": "fgfi", "weight": p["weight"]}],
                     "lr": {f: {"teacher": dm.TEACHER_LR[f] or DEFAULT_LR, "student": p["lr"][f]} for f in families},
                     "shared_runs": (f"teachers and students are imitation_gain's (shuffledet) and distill_methods' "
                                     f"(FPN families) runs of the {args.preset} preset: same recipes, same names"),
                     "selection": "none beyond each run's best-on-val checkpoint (lr and weight fixed by the preset)",
                     "calibration_images": p["calibration_images"], "threads": sp["threads"]},
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
    stem = results_stem(families, told=args.results is not None)
    atomic_write_json(out_dir / f"{stem}.json", result)
    md = render_md(result)
    atomic_write_text(out_dir / f"{stem}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
