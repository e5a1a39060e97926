"""Prune benchmark: the 0.5x imitation student pruned to <= 60% of its MACs, fine-tuned with and
without imitation, on SynthKITTI; mAP drop and ONNX Runtime fp32 speed-up.

Targets (issue 7): map_drop <= 1.0 (with imitation), ort_speedup >= 1.3, macs_ratio <= 0.6.

    .venv/bin/python benchmarks/prune.py --preset latency  # no training: untrained 0.5x pruned to 0.6 MACs
                                                           # (uniform; latency allocation with and without
                                                           # depthwise alignment, at clip ranges (0.5, 2)
                                                           # default, (0.25, 4), (0.1, 10)), ORT at 384x1248
    .venv/bin/python benchmarks/prune.py --preset smoke    # < 3 min on CPU, checks the plumbing only
    .venv/bin/python benchmarks/prune.py --preset full     # the real measurement (GPU recommended)
    .venv/bin/python benchmarks/prune.py --preset cpu --student-steps 600 --prune-steps 300
                                                           # reuses the imitation benchmark's teacher
    .venv/bin/python benchmarks/prune.py --preset cpu --teacher-steps 2000 --student-steps 1600 --prune-steps 800
                                                           # trains its own (shorter) teacher first

``cpu``: the teacher is the imitation benchmark's (``benchmarks/_reuse.py``: same SynthKITTI set,
input size, val subset, batch and threads), or with ``--teacher-steps N`` a 1x trained here first under
the same settings (no augmentation: the recipe's data config is shared by its stages); the 0.5x
imitation student, the two prune + fine-tune
stages and ``student_ft`` (the unpruned student fine-tuned with the same schedule: an equal-budget
control, since a short CPU student is still improving when it is pruned) train here.

Latency: ORT fp32 CPU, batch 1, ``--threads`` (2) intra-op threads, median of ``runs`` runs. Headline
protocol: each model in a fresh process of its own, models alternating over 3 rounds
(``compare_onnx_isolated``; on a shared machine only ratios inside one run mean anything); also
reported: one process with the models in alternating blocks of 5 runs (``compare_latency``). Single
runs interleaved round-robin in one process, the protocol of the earlier results, are biased: an idle
ORT session's worker threads keep spinning after its run and slow the next session's (0.5x student
89.3 ms interleaved, 60.5 ms in blocks, 57.0 ms alone); the ``latency`` preset reports all three.
Results merge into benchmarks/results/prune.json (``ort_speedup``; ``ort_speedup_384x1248`` when the
preset trains at a smaller size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "smoke": dict(size=[64, 192], images=24, teacher=4, student=4, prune=4, batch=4, val=4, runs=10),
    "full": dict(size=[384, 1248], images=2000, teacher=8000, student=8000, prune=2000, batch=16, val=500, runs=50),
}
FULL_SIZE = [384, 1248]
VARIANTS = {  # cpu preset: the default pruned stage with these settings changed, and what to call them
    "pruned_unaligned": ({"depthwise_align": 1}, "depthwise_align 1 (default 4), macs 0.6, imitation"),
}


def _cpu_recipe(reuse: dict, student_steps: int, prune_steps: int, teacher_steps: int | None = None) -> str:
    """The cpu preset: teacher from the imitation benchmark (or, with ``teacher_steps``, a 1x trained
    here under the same settings), then the same chain as ``_recipe``."""
    import yaml

    ev = {"batch_size": 16, "num_images_logged": 0}
    if reuse["eval_images"]:
        ev["max_images"] = reuse["eval_images"]

    def sched(steps, n_evals, lr=0.02):
        out = {"steps": steps, "batch_size": reuse["batch"], "lr": lr, "eval_every": max(steps // n_evals, 1),
               "checkpoint_every": max(steps // n_evals, 1), "log_every": min(20, steps),
               "channels_last": reuse["channels_last"]}
        return {**out, "threads": reuse["threads"]} if reuse["threads"] else out

    w = reuse["best_weight"]
    fine_tune = sched(prune_steps, 2, lr=0.005)
    pruned = {"name": "pruned", "kind": "prune", "from": "student", "teacher": "teacher", "target": {"macs": 0.6},
              "imitation": {"weight": w}, "schedule": fine_tune, "eval": ev}
    noimit = {k: v for k, v in pruned.items() if k != "teacher"} | {"name": "pruned_noimit", "imitation": {"weight": 0.0}}
    return yaml.safe_dump({"name": "bench-prune-cpu", "seed": 0, "device": "cpu", "data": reuse["data"], "stages": [
        ({"name": "teacher", "kind": "train", "model": "shuffledet_1x", "schedule": sched(teacher_steps, 1), "eval": ev}
         if teacher_steps else
         {"name": "teacher", "kind": "model_file", "path": str(reuse["teacher"]), "sha256": reuse["teacher_sha256"]}),
        {"name": "student", "kind": "train", "model": "shuffledet_0.5x", "teacher": "teacher",
         "imitation": {"weight": w}, "schedule": sched(student_steps, 2), "eval": ev},
        pruned, noimit,
        # the default pruned stage with one setting changed (VARIANTS)
        *({**pruned, "name": n, **override} for n, (override, _) in VARIANTS.items()),
        # equal-budget control: the unpruned student fine-tuned exactly like the pruned one, so a
        # short student that is still improving cannot flatter map_drop
        {"name": "student_ft", "kind": "train", "from": "student", "teacher": "teacher",
         "imitation": {"weight": w}, "schedule": fine_tune, "eval": ev}]}, sort_keys=False)


def _recipe(p: dict) -> str:
    sched = "{{steps: {s}, batch_size: %d, eval_every: {s}, checkpoint_every: {s}, log_every: 10}}" % p["batch"]
    ev = "{max_images: %d, batch_size: 4, num_images_logged: 0}" % p["val"]
    return f"""
name: bench-prune
seed: 0
device: auto
data:
  format: synth
  image_size: {p['size']}
  synth: {{num_images: {p['images']}, seed: 0}}
  max_val_images: {p['val']}
stages:
  - {{name: teacher, kind: train, model: shuffledet_1x, schedule: {sched.format(s=p['teacher'])}, eval: {ev}}}
  - {{name: student, kind: train, model: shuffledet_0.5x, teacher: teacher, imitation: {{weight: 1.0}},
     schedule: {sched.format(s=p['student'])}, eval: {ev}}}
  - {{name: pruned, kind: prune, from: student, teacher: teacher, target: {{macs: 0.6}}, imitation: {{weight: 1.0}},
     schedule: {sched.format(s=p['prune'])}, eval: {ev}}}
  - {{name: pruned_noimit, kind: prune, from: student, target: {{macs: 0.6}}, imitation: {{weight: 0.0}},
     schedule: {sched.format(s=p['prune'])}, eval: {ev}}}
"""


PROTOCOLS = {  # how ORT latency is timed; the first is the headline (ort_ms, ort_speedup)
    "isolated": "each model in a fresh process of its own, models alternating over 3 rounds",
    "blocks": "one process, models alternating in blocks of 5 runs (first run of a block dropped)",
    "interleaved": "one process, single runs round-robin (biased: idle sessions' spinning threads slow the timed one)",
}


def _ort_compare_ms(models: dict[str, torch.nn.Module], hw: list[int], runs: int, threads: int = 2, *,
                    protocols: tuple[str, ...] = ("isolated", "blocks")) -> dict[str, dict[str, float]]:
    """Median ORT fp32 latency (ms) per model, ``{protocol: {model: ms}}`` (:data:`PROTOCOLS`)."""
    from compressdet.bench.latency import compare_latency, compare_onnx_isolated
    from compressdet.export.runtime import ort_session

    x = torch.zeros(1, 3, *hw)
    feed = {"images": x.numpy()}
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for name, model in models.items():
            paths[name] = Path(d) / f"{name}.onnx"
            torch.onnx.export(model.eval(), (x,), str(paths[name]), input_names=["images"], opset_version=17,
                              dynamo=False)
        if "isolated" in protocols:
            out["isolated"] = {k: v["median_ms"] for k, v in compare_onnx_isolated(paths, runs=runs,
                                                                                    threads=threads).items()}
        if set(protocols) - {"isolated"}:
            sessions = {k: ort_session(f, threads=threads) for k, f in paths.items()}
            fns = {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}
            if "blocks" in protocols:
                out["blocks"] = {k: v["median_ms"] for k, v in compare_latency(fns, runs=runs, block=5).items()}
            if "interleaved" in protocols:
                out["interleaved"] = {k: v["median_ms"] for k, v in
                                      compare_latency(fns, runs=runs, block=1, drop_first=False).items()}
    return {k: out[k] for k in protocols}


def _prune_untrained(allocation: str, hw: list[int], weight_range: tuple[float, float] | None = None,
                     base: torch.nn.Module | None = None, depthwise_align: int = 4) -> tuple[torch.nn.Module, dict]:
    """The 0.5x student (untrained, or a copy of ``base``) pruned to 0.6 backbone MACs the way the
    prune stage does it (``depthwise_align`` 4 is the stage's default)."""
    import copy

    from compressdet.models import build_model
    from compressdet.stages.prune import build_pruner

    model = (copy.deepcopy(base) if base is not None else build_model("shuffledet_0.5x", image_size=tuple(hw))).train()
    kw = {"weight_range": weight_range} if weight_range else {}
    rec = build_pruner(model, tuple(hw), target_macs=0.6, allocation=allocation, depthwise_align=depthwise_align,
                       **kw).step()
    return model.eval(), {"macs_ratio": rec["macs_after"] / rec["base_macs"],
                          "channels_removed": {op["module"]: len(op["idxs"]) for op in rec["ops"]},
                          "weights": rec.get("weights")}


def _latency_only(args: argparse.Namespace) -> dict:
    from compressdet.models import build_model

    hw = FULL_SIZE
    torch.manual_seed(0)
    student = build_model("shuffledet_0.5x", image_size=tuple(hw)).eval()
    models = {"student": student}
    info = {}
    # uniform, the default latency allocation, without depthwise alignment, and the clip range swept
    for name, alloc, wr, align in (("uniform", "uniform", None, 4), ("latency", "latency", None, 4),
                                   ("latency_unaligned", "latency", None, 1),
                                   ("latency_0.25-4", "latency", (0.25, 4.0), 4),
                                   ("latency_0.1-10", "latency", (0.1, 10.0), 4)):
        models[f"pruned_{name}"], info[name] = _prune_untrained(alloc, hw, wr, base=student, depthwise_align=align)
    timed = _ort_compare_ms(models, hw, args.runs, args.threads, protocols=tuple(PROTOCOLS))
    ms = timed["isolated"]
    base = ms["student"]
    return {"preset": "latency", "image_size": hw, "threads": args.threads, "runs": args.runs, "ort_ms": ms,
            "protocol": PROTOCOLS["isolated"],
            "macs_ratio": info["latency"]["macs_ratio"], "macs_ratios": {k: v["macs_ratio"] for k, v in info.items()},
            "ort_speedup": base / ms["pruned_latency"],
            "ort_speedups": {k[len("pruned_"):]: base / v for k, v in ms.items() if k.startswith("pruned_")},
            "ort_speedup_384x1248": base / ms["pruned_latency"], "allocation": info,
            "by_protocol": {p: {"what": PROTOCOLS[p], "ort_ms": t,
                                "ort_speedups": {k[len("pruned_"):]: t["student"] / v for k, v in t.items()
                                                 if k.startswith("pruned_")}} for p, t in timed.items()},
            "targets": {"macs_ratio": "<= 0.6", "ort_speedup": ">= 1.3"}}


def _write(out: Path, res: dict, lines: list[str]) -> None:
    from compressdet._io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    old = {}
    if (out / "prune.json").exists():
        try:
            old = json.loads((out / "prune.json").read_text())
        except json.JSONDecodeError:
            old = {}
    key = "latency" if res["preset"] == "latency" else "training"
    res = {**res, "report": lines}
    parts = {**{k: v for k, v in old.items() if k in ("latency", "training")}, key: res}
    # the top level is the training measurement (the keys: map_drop ...) when there is one
    merged = {**parts.get("training", res), **parts}
    atomic_write_json(out / "prune.json", merged)
    reports = [merged[k]["report"] for k in ("training", "latency") if k in merged and "report" in merged[k]]
    atomic_write_text(out / "prune.md", "\n\n".join("\n".join(r) for r in reports) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS) + ["latency", "cpu"], default="smoke")
    ap.add_argument("--workdir", default=None, help="keep the run here and resume it on re-runs (cpu default: "
                    "benchmarks/.prune_cpu)")
    ap.add_argument("--student-steps", type=int, default=600, help="(cpu preset) 0.5x imitation student steps")
    ap.add_argument("--prune-steps", type=int, default=300, help="(cpu preset) fine-tune steps after pruning")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="(cpu preset) train the 1x teacher here for this many steps (same data, batch and val "
                         "subset) instead of reusing the imitation benchmark's")
    ap.add_argument("--imitation-results", type=Path, default=ROOT / "benchmarks" / "results" / "imitation_gain.json",
                    help="(cpu preset) the imitation benchmark's results JSON whose teacher is reused")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--rerun", nargs="+", default=[], metavar="STAGE",
                    help="re-run these stages of the kept run (the others resume), e.g. pruned pruned_noimit")
    ap.add_argument("--runs", type=int, default=30, help="latency runs per model (median; >= 30)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.preset == "latency":
        res = _latency_only(args)
        ms = res["ort_ms"]
        bp = res["by_protocol"]
        lines = [f"# Prune latency (untrained 0.5x -> 0.6 backbone MACs, 384x1248, ORT fp32 {args.threads} threads, "
                 f"median of {args.runs} runs)", "",
                 *(f"- {p}: {v['what']}" for p, v in bp.items()), "",
                 "| model | backbone MACs ratio | " + " | ".join(f"{p} ms | speed-up" for p in bp) + " |",
                 "|---|---|" + "---|---|" * len(bp)]
        lines += [f"| {k} | {res['macs_ratios'].get(k[len('pruned_'):], 1.0):.3f} | "
                  + " | ".join(f"{v['ort_ms'][k]:.1f} | {v['ort_ms']['student'] / v['ort_ms'][k]:.2f}x" for v in bp.values())
                  + " |" for k in ms]
        lines += ["", f"macs_ratio {res['macs_ratio']:.3f} (latency allocation, default clip (0.5, 2)), "
                  f"{res['macs_ratios']['uniform']:.3f} (uniform); ort_speedup {res['ort_speedup']:.2f}x (latency), "
                  f"{res['ort_speedups']['uniform']:.2f}x (uniform)"]
        _write(Path(args.out), res, lines)
        print("\n".join(lines))
        return 0
    from compressdet.eval import format_table
    from compressdet.eval.table import result_from_ap40, size_cells
    from compressdet.models import load_model, model_summary
    from compressdet.pipeline import run_recipe
    from compressdet.recipe import parse_recipe

    if args.preset == "cpu":
        from _reuse import imitation_teacher, student_settings

        if args.teacher_steps:  # the imitation benchmark's best weight when it has run, else the seed's 1.0
            best = json.loads(args.imitation_results.read_text())["best_weight"] if args.imitation_results.is_file() else 1.0
            reuse = {**student_settings("cpu"), "best_weight": best}
        else:
            reuse = imitation_teacher(args.imitation_results)
        p = {"size": list(reuse["data"]["image_size"]), "runs": 50}
        text = _cpu_recipe(reuse, args.student_steps, args.prune_steps, args.teacher_steps)
        torch.set_num_threads(reuse["threads"] or 2)
    else:
        p = PRESETS[args.preset]
        text = _recipe(p)

    t0 = time.time()
    keep = args.workdir is not None or args.preset == "cpu"  # long runs: keep the folder, resume on re-runs
    with contextlib.ExitStack() as stack:
        d = (Path(args.workdir or ROOT / "benchmarks" / ".prune_cpu") if keep
             else Path(stack.enter_context(tempfile.TemporaryDirectory())))
        run_dir = d / "run"
        recipe = parse_recipe(text, source=f"benchmarks/prune.py:{args.preset}")
        for name in args.rerun:  # e.g. after a pruner change: re-run these, keep the trained student
            run_recipe(recipe, run_dir=run_dir, only=name)
        run_dir = run_recipe(recipe, run_dir=run_dir, resume=(run_dir / "manifest.json").exists())
        manifest = json.loads((run_dir / "manifest.json").read_text())
        stages = manifest["stages"]
        stages = stages if isinstance(stages, dict) else {s["name"]: s for s in stages}
        rows, loaded, cells = {}, {}, {}
        for name in ("student", "pruned", "pruned_noimit") + tuple(n for n in (*VARIANTS, "student_ft") if n in stages):
            loaded[name], _ = load_model(next(run_dir.rglob(f"{name}/model.pt")))
            s = model_summary(loaded[name], tuple(p["size"]))
            rows[name] = {"map40": stages[name]["metrics"].get("map40"), "macs": s["macs"]["backbone"],
                          "params": s["params"]["total"], "ap40": stages[name]["metrics"].get("ap40")}
            cells[name] = size_cells(s)
    timed = _ort_compare_ms(loaded, p["size"], max(args.runs, p["runs"]), args.threads)
    ms = timed["isolated"]
    for k, r in rows.items():
        r["ort_ms"] = ms[k]
        r["ort_ms_blocks"] = timed["blocks"][k]
    st, pr, pn = rows["student"], rows["pruned"], rows["pruned_noimit"]
    res = {"preset": args.preset, "image_size": p["size"], "threads": args.threads, "macs_ratio": pr["macs"] / st["macs"],
           "map_drop": (st["map40"] or 0) - (pr["map40"] or 0),
           "map_drop_without_imitation": (st["map40"] or 0) - (pn["map40"] or 0),
           "ort_speedup": st["ort_ms"] / pr["ort_ms"], "ort_speedup_blocks": st["ort_ms_blocks"] / pr["ort_ms_blocks"],
           "latency_protocol": PROTOCOLS["isolated"], "rows": rows, "minutes": (time.time() - t0) / 60,
           "variants": {n: {"what": VARIANTS[n][1], "macs_ratio": rows[n]["macs"] / st["macs"],
                            "map_drop": (st["map40"] or 0) - (rows[n]["map40"] or 0),
                            "ort_speedup": st["ort_ms"] / rows[n]["ort_ms"]} for n in VARIANTS if n in rows},
           **({"map_drop_vs_equal_budget": (rows["student_ft"]["map40"] or 0) - (pr["map40"] or 0),
               "map_drop_vs_equal_budget_without_imitation": (rows["student_ft"]["map40"] or 0) - (pn["map40"] or 0)}
              if "student_ft" in rows else {}),
           "targets": {"macs_ratio": "<= 0.6", "map_drop": "<= 1.0", "ort_speedup": ">= 1.3"}}
    if list(p["size"]) != FULL_SIZE:  # weights don't depend on the input size: time the same nets at full size
        timed = _ort_compare_ms({k: loaded[k] for k in ("student", "pruned", *VARIANTS) if k in loaded}, FULL_SIZE,
                                args.runs, args.threads)
        full = timed["isolated"]
        res["ort_speedup_384x1248"] = full["student"] / full["pruned"]
        res["ort_speedup_384x1248_blocks"] = timed["blocks"]["student"] / timed["blocks"]["pruned"]
        res["ort_ms_384x1248"] = full
        res["ort_ms_384x1248_blocks"] = timed["blocks"]
        for n, v in res["variants"].items():
            v["ort_speedup_384x1248"] = full["student"] / full[n]
    lines = [f"# Prune benchmark ({args.preset}, {p['size'][0]}x{p['size'][1]}, ORT fp32 {args.threads} threads)", "",
             "AP40 (official protocol); FLOPs = backbone MACs, params with BN statistics (the seed's columns); "
             f"ORT ms = batch 1 at {p['size'][0]}x{p['size'][1]}, median of {max(args.runs, p['runs'])} runs, "
             f"{PROTOCOLS['isolated']} (in one process, alternating blocks of 5 runs: ort_speedup "
             f"{res['ort_speedup_blocks']:.2f}x" + (f", {res['ort_speedup_384x1248_blocks']:.2f}x at 384x1248"
                                                   if "ort_speedup_384x1248_blocks" in res else "") + ").",
             ""]
    scored = [n for n, r in rows.items() if r["ap40"]]
    if scored:
        lines.append(format_table([result_from_ap40(rows[n]["ap40"]) for n in scored], models=scored,
                                  flops=[cells[n][0] for n in scored],
                                  params=[cells[n][1] for n in scored], metrics="ap40",
                                  extra=[{"ORT ms": f"{rows[n]['ort_ms']:.2f}"} for n in scored]).rstrip("\n"))
    lines += ["", f"macs_ratio {res['macs_ratio']:.3f}, map_drop {res['map_drop']:.2f}, "
              f"map_drop_without_imitation {res['map_drop_without_imitation']:.2f}, ort_speedup {res['ort_speedup']:.2f}x"
              + (f", ort_speedup_384x1248 {res['ort_speedup_384x1248']:.2f}x" if "ort_speedup_384x1248" in res else "")]
    for n, v in res["variants"].items():
        lines += ["", f"{n} = {v['what']}: macs_ratio {v['macs_ratio']:.3f}, map_drop {v['map_drop']:.2f}, "
                  f"ort_speedup {v['ort_speedup']:.2f}x"
                  + (f", ort_speedup_384x1248 {v['ort_speedup_384x1248']:.2f}x" if "ort_speedup_384x1248" in v else "")]
    if "map_drop_vs_equal_budget" in res:
        lines += ["", "student_ft = the unpruned student fine-tuned with the pruned model's schedule (equal budget): "
                  f"map_drop_vs_equal_budget {res['map_drop_vs_equal_budget']:.2f} with imitation, "
                  f"{res['map_drop_vs_equal_budget_without_imitation']:.2f} without"]
    _write(Path(args.out), res, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
