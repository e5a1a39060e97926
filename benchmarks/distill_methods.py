"""Which distillation method helps a small student most? FGFI vs PKD vs CrossKD, per detector family.

Head to head under the evidence protocol (``benchmarks/_protocol.py``), on the imitation
benchmark's data, teacher and schedule (``imitation_gain.PRESETS``; the teacher run is shared and
cached, so it is trained once for both benchmarks):

- arms: no distillation, ``fgfi`` (the seed's method), ``pkd``, ``crosskd``, and ``pkd+crosskd``
  (the combination CrossKD's own results use), all at equal steps;
- selection on val, seed 0, the same number of tried settings per arm: the baseline's lr
  (``lr_sweep``), then at that lr each method's weight from its own ``sweeps`` list (the
  combination scales both members' chosen weights by ``combo_scales``); the "best method" is
  the non-FGFI arm with the best mean *val* mAP over the seeds;
- report: every arm's chosen model evaluated once on the whole test split, 3 paired seeds; each
  arm's mean paired difference against FGFI and against no distillation, with 95% t intervals.

Writes ``benchmarks/results/distill_methods.{json,md}`` and ``distill_methods.png`` (test mAP40
per arm: mean bar, one dot per seed). Every run is cached: killed, it resumes.

    python benchmarks/distill_methods.py --preset smoke    # ~1 min, the plumbing only
    python benchmarks/distill_methods.py --preset cpu      # hours on a 2-core CPU; resumable

``--family``: ``shuffledet`` (0.25x from the 1x, the imitation benchmark's teacher and runs),
``fcos`` (``fcos_mnv2_050`` from ``fcos_mnv3_large``) or ``retinanet`` (``retinanet_mnv2_050`` from
``retinanet_mnv3_large``); same data, schedule, sweeps and seeds for every family, each family's own
teacher trained once and cached. One invocation per family; each adds its student to the results
JSON (the other families' entries of the same preset and seeds are kept).

    python benchmarks/distill_methods.py --preset cpu --family fcos

``--preset calibrated`` (issue #41; ``smoke-calibrated``: its plumbing in about a minute) compares the
methods at equal *strength* instead of equal loss weight: every method (``fgfi``, ``pkd``, ``crosskd``)
is swept on the same grid of gradient ratios (``weight: auto`` with ``auto_ratio`` r: the distillation
gradient on the student's backbone + neck set to r x the detection loss's before training; six points
log-spaced 0.3x to 100x, the grid extended past an edge, a point at a time, while the best point
sits at that edge), the clip mode (per-tensor 1.0, the seed's, and global 35, mmdetection's) part of the sweep for
FGFI and the best other method, every setting chosen on val over two seeds and reported once on test
over three other seeds. The combination ``pkd+crosskd`` is calibrated per term (each member's own
``weight: auto`` at its chosen ratio, both scaled by ``combo_scales``, at the better member's clip) and
competes with the single methods for ``best_vs_fgfi``. It writes ``distill_methods_calibrated.{json,md}``
(never the uncalibrated results or ledger); per family: ``calibration`` (arm -> {chosen weight:
{grad_ratio_at_1 (the ratio measured at weight 1), auto_ratio (the target), grad_ratio, seed, params}};
a combination's members as ``pkd+crosskd:pkd``), ``sweep`` (method -> {"<ratio>@<clip>": {seed: val
mAP40}}; the combination's points ``x<scale>@<clip>``), ``chosen``, ``test_map40``, ``best_vs_fgfi``
(per_seed, mean, ci95) and ``auto_weight`` (each single method at ``weight: auto``'s default ratio
against its swept best, on test).

    python benchmarks/distill_methods.py --preset calibrated --family fcos
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import imitation_gain as ig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# weights each method may choose from on val (its default first: ties keep it)
SWEEPS = {"fgfi": [1.0, 0.5, 0.25], "pkd": [2.0, 6.0, 0.5], "crosskd": [1.0, 2.0, 0.5]}
COMBO = ("pkd", "crosskd")
COMBO_SCALES = [1.0, 0.5, 0.25]
#: family -> (teacher, student) registry names. The FPN students are the MobileNetV2 x0.5 ones: a
#: student is made to be deployed in INT8, and only their int8 graphs run faster than the fp32 ones
#: on a CPU (benchmarks/fpn_speed.py: x1.4-2.0; the MobileNetV3-small students x0.9-1.2, their
#: HardSwish and squeeze-excitation run in float between the int8 convs).
FAMILIES = {"shuffledet": ("shuffledet_1x", "shuffledet_0.25x"), "fcos": ("fcos_mnv3_large", "fcos_mnv2_050"),
            "retinanet": ("retinanet_mnv3_large", "retinanet_mnv2_050")}

#: teacher lr per family: None is the schedule's default (0.02, imitation_gain's ShuffleDet teacher);
#: the FPN families train at 0.01 as recipes/quickstart_fcos.yaml does. families.py reads its FPN
#: teachers from this benchmark (same recipe, same run), so they are trained once for both.
TEACHER_LR = {"shuffledet": None, "fcos": 0.01, "retinanet": 0.01}


def model_blocks(family: str, data_cfg) -> tuple[str | dict, str | dict]:
    """The teacher's and the student's ``model`` of a family's recipes: the registered name, and for
    RetinaNet also its anchor scale, sized on the training split's boxes (``compressdet anchors``'
    choice; labels only, never val or test): torchvision's default anchors (32 px and up at stride 8)
    leave 28% of SynthKITTI's boxes at 192x624 without an anchor at IoU 0.5 (teacher-8c789e6dd623,
    trained with them, reached 0.05 val mAP40). Teacher and student share the anchor generator, so
    one scale serves both. RetinaNet's head is torchvision's v2 (``head: v2``, GroupNorm + GIoU): with
    the plain v1 head and fitted anchors, teacher-c41a61bed491 still had 0.0 val mAP40 at 2,000
    steps, its losses flat."""
    tarch, sarch = FAMILIES[family]
    if family != "retinanet":
        return tarch, sarch
    import torch

    from compressdet.data.records import input_boxes
    from compressdet.models import suggest_anchor_scale

    boxes = torch.from_numpy(input_boxes(data_cfg, "train"))
    scale, _ = suggest_anchor_scale(sarch, boxes, tuple(data_cfg.image_size), len(data_cfg.classes))
    return ({"arch": tarch, "anchor_scale": scale, "head": "v2"},
            {"arch": sarch, "anchor_scale": scale, "head": "v2"})


def _methods(arm: str, weights: dict[str, float]) -> list[dict] | None:
    if arm == "none":
        return None
    return [{"method": m, "weight": weights[m]} for m in arm.split("+")]


def _teacher_test(runner, teacher_file: Path, data: dict) -> float:
    """The teacher's test mAP40: cached by its (recorded) sha256; its bytes made only on a cache miss."""
    from _protocol import test_map

    try:
        return test_map(teacher_file, data, runner.test_dir, model_sha256=runner.teacher_sha.get(str(teacher_file)))["map40"]
    except FileNotFoundError:
        runner.make_teacher()
        return test_map(teacher_file, data, runner.test_dir)["map40"]


#: the calibrated presets (issue #41): the base preset (data, schedule, teacher: shared with it), the
#: gradient-ratio grid, the clip modes swept for FGFI and the best other method, selection and report seeds
CALIBRATED = {
    "calibrated": {"base": "cpu", "ratios": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
                   "clips": [{"mode": "per_tensor", "max_norm": 1.0}, {"mode": "global", "max_norm": 35.0}],
                   "select_seeds": [0, 1], "report_seeds": [2, 3, 4], "extend": True,
                   "combo_scales": list(COMBO_SCALES)},
    "smoke-calibrated": {"base": "smoke", "ratios": [1.0, 10.0],
                         "clips": [{"mode": "per_tensor", "max_norm": 1.0}, {"mode": "global", "max_norm": 35.0}],
                         "select_seeds": [0, 1], "report_seeds": [0, 1], "extend": False, "combo_scales": [1.0]},
}
CALIBRATED_METHODS = ("fgfi", "pkd", "crosskd")
AUTO_DEFAULT_RATIO = 1.0  # DistillConfig.auto_ratio's default


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(ig.PRESETS) + sorted(CALIBRATED), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".imitation_gain",
                    help="shared with imitation_gain.py: the teacher run is reused")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--seeds", type=int, help="(checks only) number of paired seeds (default 3)")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="shuffledet", help="detector family")
    ap.add_argument("--ledger", type=Path, help="committed record of finished runs (default: "
                    "benchmarks/ledger/distill_methods/<preset> for cpu/gpu, none for smoke)")
    ap.add_argument("--no-ledger", action="store_true", help="neither read nor write the ledgers")
    args = ap.parse_args(argv)
    if args.preset in CALIBRATED:
        return calibrated(args)
    p = copy.deepcopy(ig.PRESETS[args.preset])
    if args.seeds:
        p["seeds"] = list(range(args.seeds))

    from _protocol import claim, protocol_keys

    from compressdet._io import atomic_write_json, atomic_write_text
    from compressdet.data import build_dataset, prepare_data
    from compressdet.eval.stats import describe
    from compressdet.recipe import DataConfig

    t_start = time.perf_counter()
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    seeds = p["seeds"]
    s_cfg = DataConfig(**ig._data(p, True))
    prepare_data(s_cfg)
    n = {split: len(build_dataset(s_cfg, split, train=split == "train")) for split in ("train", "val", "test")}
    data_hash = ig.data_hash_of(s_cfg)
    plan = ig.plan_steps(p, n["train"])

    # ShuffleDet: the imitation benchmark's teacher (same recipe -> same cached run); other families
    # their own teacher on the same data and schedule
    tarch, sarch = model_blocks(args.family, s_cfg)
    teacher_recipe = ig.make_teacher_recipe(p, tarch, plan["teacher_steps"], data_hash, lr=TEACHER_LR[args.family])
    key = teacher_recipe["name"].removeprefix("teacher-")
    ledger = ig.bench_ledger("distill_methods", args)
    # ShuffleDet's teacher is the imitation benchmark's run, recorded in its ledger (a check run's --ledger
    # holds both); another family's teacher is this benchmark's own
    shared = args.family == "shuffledet" and ledger.root is not None and not args.ledger
    tledger = ig.Ledger.for_bench("imitation_gain", args.preset) if shared else ledger
    # every student here is a leaf (evaluated, never built on): a recorded one is taken from its record
    # when this machine lacks its bytes, so a benchmark longer than a session resumes without re-training
    # it; the teacher's bytes are made (trained again, byte for byte) only when a student has to train
    tman = ig._run(teacher_recipe, work, tledger, need_files=False)
    trec = tman["stages"]["teacher"]
    teacher_file = ig.model_file(work, tman, "teacher", tledger)
    runner = ig.student_runner(work, p, n["train"], key, test_dir=ledger.test_dir or work / "test_eval", ledger=ledger,
                               arch=sarch, need_files=False)
    if "ledger_files" in tman:
        runner.teacher_sha[str(teacher_file)] = ig.recorded_sha256(tman, "teacher")
        runner.make_teacher = lambda: ig.model_file(work, ig._run(teacher_recipe, work, tledger), "teacher", tledger)

    arms = ["none", "fgfi", "pkd", "crosskd", "+".join(COMBO)]
    k = len(p["lr_sweep"])  # every arm tries as many settings on val as the baseline's lr sweep
    sweeps = {m: SWEEPS[m][:k] for m in SWEEPS}
    scales = COMBO_SCALES[:k]
    runs: dict[str, dict[int, dict]] = {a: {} for a in arms}
    chosen: dict[str, dict] = {}
    sweeps_val: dict[str, dict] = {}
    s0 = seeds[0]
    with ig.teacher_feature_cache(work / "feature_cache", n["train"], enabled=p["feature_cache"]):
        # selection on val, seed s0: baseline lr, then each method's weight at that lr
        lr_val, lr_runs = {}, {}
        for lr in p["lr_sweep"]:
            lr_runs[lr] = runner.run(f"base-lr{lr}", s0, lr, 0.0, None)  # the imitation benchmark's run names
            lr_val[str(lr)] = lr_runs[lr]["val"]["map40"]
        best_lr = ig._best(p["lr_sweep"], lr_val)
        runs["none"][s0], chosen["none"], sweeps_val["none"] = lr_runs[best_lr], {"lr": best_lr}, {"lr": lr_val}

        def arm_run(arm: str, seed: int, weights: dict[str, float]) -> dict:
            tag = "-".join(f"{m}{w}" for m, w in sorted(weights.items()))
            if arm == "fgfi":  # exactly the imitation benchmark's imitating student (shared cache)
                return runner.run(f"I-lr{best_lr}-w{weights['fgfi']}", seed, best_lr, weights["fgfi"], teacher_file)
            return runner.run(f"D-{arm.replace('+', '_')}-lr{best_lr}-{tag}", seed, best_lr, 0.0, teacher_file,
                              distill=_methods(arm, weights))

        for m in ("fgfi", "pkd", "crosskd"):
            val, by_w = {}, {}
            for w in sweeps[m]:
                by_w[w] = arm_run(m, s0, {m: w})
                val[str(w)] = by_w[w]["val"]["map40"]
            w_best = ig._best(sweeps[m], val)
            runs[m][s0], chosen[m], sweeps_val[m] = by_w[w_best], {"lr": best_lr, "weights": {m: w_best}}, {"weight": val}
        combo = "+".join(COMBO)
        val, by_s = {}, {}
        for scale in scales:
            weights = {m: chosen[m]["weights"][m] * scale for m in COMBO}
            by_s[scale] = arm_run(combo, s0, weights)
            val[str(scale)] = by_s[scale]["val"]["map40"]
        s_best = ig._best(scales, val)
        runs[combo][s0] = by_s[s_best]
        chosen[combo] = {"lr": best_lr, "weights": {m: chosen[m]["weights"][m] * s_best for m in COMBO}}
        sweeps_val[combo] = {"scale": val}
        # the other paired seeds with the chosen settings
        for seed in seeds[1:]:
            runs["none"][seed] = runner.run(f"base-lr{best_lr}", seed, best_lr, 0.0, None)
            for arm in arms[1:]:
                runs[arm][seed] = arm_run(arm, seed, chosen[arm]["weights"])

    test = {a: {s: r["test"]["map40"] for s, r in by.items()} for a, by in runs.items()}
    val = {a: {s: r["val"]["map40"] for s, r in by.items()} for a, by in runs.items()}
    vs_fgfi = {a: claim(test[a], test["fgfi"], seeds) for a in arms if a != "fgfi"}
    vs_none = {a: claim(test[a], test["none"], seeds) for a in arms if a != "none"}
    candidates = [a for a in arms if a not in ("none", "fgfi")]
    best = max(candidates, key=lambda a: (statistics.mean(val[a][s] for s in seeds), -candidates.index(a)))
    best_vs_fgfi = {"method": best, **{k: vs_fgfi[best][k] for k in ("per_seed", "mean", "ci95", "significant")}}
    model = sarch
    entry = {
        "family": args.family, "teacher": {"arch": tarch, "run": teacher_recipe["name"],
                                           "val_map40": trec["metrics"]["map40"],
                                           "test_map40": _teacher_test(runner, teacher_file, ig._data(p, True))},
        "command": f"python benchmarks/distill_methods.py --preset {args.preset} --family {args.family}",
        "arms": arms, "chosen": chosen, "sweeps_seed0_val": sweeps_val,
        "test_map40": {a: [test[a][s] for s in seeds] for a in arms},
        "val_map40": {a: [val[a][s] for s in seeds] for a in arms},
        "vs_fgfi": vs_fgfi, "vs_none": vs_none, "best_by_val": best, "best_vs_fgfi": best_vs_fgfi,
        "goal_met": bool(best_vs_fgfi["mean"] >= 1.0 and best_vs_fgfi["ci95"][0] > 0),
        "minutes": sum(runner.student_s) / 60, "total_minutes": (time.perf_counter() - t_start) / 60,
    }
    out = args.results / "distill_methods.json"
    students = _kept_students(out, args.preset, seeds)
    students[model] = entry
    result = {
        "preset": args.preset, **protocol_keys(seeds),
        "command": "python benchmarks/distill_methods.py --preset " + args.preset + " --family "
                   + "|".join(sorted({s["family"] for s in students.values()})),
        "steps": {"student": plan["student_steps"], "batch": p["batch"], "passes": plan["student_passes"]},
        "data": {"train_images": n["train"], "val_images": n["val"], "test_images": n["test"], "data_hash": data_hash},
        "students": dict(sorted(students.items())),
    }
    # top-level keys of the evidence protocol stay ShuffleDet's (the seed's model) when it is there
    ref = students.get("shuffledet_0.25x") or entry
    result.update(teacher=ref["teacher"], minutes=ref["minutes"], total_minutes=ref["total_minutes"])
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    _bar_chart(test, seeds, args.results / f"distill_methods{'' if args.family == 'shuffledet' else '_' + args.family}.png",
               title=f"{model}, test split ({args.preset})")
    md = [f"# Distillation methods ({args.preset} preset)", "", f"`{result['command']}`", "",
          f"{n['train']} train / {n['val']} val (selection) / {n['test']} test (report) images; "
          f"{plan['student_steps']} steps per student ({plan['student_passes']:.1f} passes); seeds {seeds}."]
    for name, st in result["students"].items():
        md += ["", f"## {name} from {st['teacher']['arch']} ({st['family']})", "", f"`{st['command']}`", "",
               "| arm | chosen on val | test mAP40 per seed | mean | vs FGFI (test) |", "|---|---|---|---|---|"]
        for a in st["arms"]:
            v = st["test_map40"][a]
            md.append(f"| {a} | {st['chosen'][a]} | {', '.join(f'{x:.2f}' for x in v)} | {statistics.mean(v):.2f} | "
                      f"{describe(st['vs_fgfi'][a]) if a in st['vs_fgfi'] else 'reference'} |")
        b = st["best_by_val"]
        md += ["", f"- best method by val: **{b}**; against FGFI on test: {describe(st['vs_fgfi'][b])}",
               f"- goal (best beats FGFI by >= +1.0 with a CI above 0): {'met' if st['goal_met'] else 'not met'}",
               f"- chart: distill_methods{'' if st['family'] == 'shuffledet' else '_' + st['family']}.png"]
    atomic_write_text(args.results / "distill_methods.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _clip_tag(clip: dict) -> str:
    return f"{clip['mode']}{clip['max_norm']:g}"


def _setup(args, p: dict, base: str):
    """Data, teacher (the base preset's cached run) and the student runner of one family."""
    from compressdet.data import build_dataset, prepare_data
    from compressdet.recipe import DataConfig

    work = args.work / base  # the base preset's work folder: its teacher is reused
    work.mkdir(parents=True, exist_ok=True)
    s_cfg = DataConfig(**ig._data(p, True))
    prepare_data(s_cfg)
    n = {split: len(build_dataset(s_cfg, split, train=split == "train")) for split in ("train", "val", "test")}
    data_hash = ig.data_hash_of(s_cfg)
    plan = ig.plan_steps(p, n["train"])
    tarch, sarch = model_blocks(args.family, s_cfg)
    teacher_recipe = ig.make_teacher_recipe(p, tarch, plan["teacher_steps"], data_hash, lr=TEACHER_LR[args.family])
    if args.no_ledger or (args.ledger is None and args.preset.startswith("smoke")):
        ledger = ig.Ledger(None)  # check runs never write into the repository
    else:
        ledger = ig.Ledger.at(args.ledger) if args.ledger else ig.Ledger.for_bench("distill_methods", args.preset)
    tman = ig._run(teacher_recipe, work, ledger, need_files=False)
    teacher_file = ig.model_file(work, tman, "teacher", ledger)
    runner = ig.student_runner(work, p, n["train"], teacher_recipe["name"].removeprefix("teacher-"),
                               test_dir=ledger.test_dir or work / "test_eval", ledger=ledger, arch=sarch,
                               need_files=False)
    if "ledger_files" in tman:
        runner.teacher_sha[str(teacher_file)] = ig.recorded_sha256(tman, "teacher")
        runner.make_teacher = lambda: ig.model_file(work, ig._run(teacher_recipe, work, ledger), "teacher", ledger)
    return {"n": n, "plan": plan, "data_hash": data_hash, "tarch": tarch, "sarch": sarch, "runner": runner,
            "teacher_file": teacher_file, "teacher": {"arch": tarch, "run": teacher_recipe["name"],
                                                      "val_map40": tman["stages"]["teacher"]["metrics"]["map40"]}}


def extend_past_edges(grid: list[float], try_ratio: Callable[[float], None], best_ratio: Callable[[], float],
                      max_points: int = 4) -> list[float]:
    """Extend a swept ratio grid one log step (its first step) past an edge, a point at a time, while the
    best point sits at that edge (issue #41: "extended whenever the best point is at an edge"); at most
    ``max_points`` new points. ``try_ratio(r)`` runs a point, ``best_ratio()`` the best so far. Returns the grid."""
    grid = sorted(grid)
    step = grid[1] / grid[0]
    for _ in range(max_points):
        best = best_ratio()
        if best == grid[0]:
            grid.insert(0, round(grid[0] / step, 3))
            try_ratio(grid[0])
        elif best == grid[-1]:
            grid.append(round(grid[-1] * step, 3))
            try_ratio(grid[-1])
        else:
            break
    return grid


def calibrated(args) -> int:
    """The calibrated head-to-head (see the module docstring); one family per invocation."""
    import json

    from _protocol import claim, protocol_keys

    from compressdet._io import atomic_write_json, atomic_write_text

    t_start = time.perf_counter()
    c = CALIBRATED[args.preset]
    p = copy.deepcopy(ig.PRESETS[c["base"]])
    sel, rep_seeds = list(c["select_seeds"]), list(c["report_seeds"])
    if args.seeds:  # checks only: fewer report seeds
        rep_seeds = rep_seeds[:args.seeds]
    env = _setup(args, p, c["base"])
    runner, teacher_file = env["runner"], env["teacher_file"]
    default_clip = c["clips"][0]

    def mean_val(runs: dict) -> float:
        return statistics.mean(r["val"]["map40"] for r in runs.values())

    with ig.teacher_feature_cache(args.work / c["base"] / "feature_cache", env["n"]["train"], enabled=False):
        # the baseline's lr on val over the selection seeds; every arm trains at it
        base_runs = {lr: {s: runner.run(f"base-lr{lr}", s, lr, 0.0, None) for s in sel} for lr in p["lr_sweep"]}
        lr = max(p["lr_sweep"], key=lambda v: (mean_val(base_runs[v]), -p["lr_sweep"].index(v)))

        def arm(method: str, ratio: float | dict[str, float], clip: dict, seed: int) -> dict:
            """One run: a method at ``weight: auto`` with ``auto_ratio`` ratio; a combination ("a+b") with
            ``ratio`` {member: its auto_ratio}: every term calibrated on its own."""
            ratios = ratio if isinstance(ratio, dict) else {method: ratio}
            d = [{"method": m, "weight": "auto", "auto_ratio": ratios[m]} for m in method.split("+")]
            sched = None if clip == default_clip else {"clip": clip}
            r_tag = "_".join(f"{ratios[m]:g}" for m in method.split("+"))
            return runner.run(f"C-{method.replace('+', '_')}-r{r_tag}-{_clip_tag(clip)}-lr{lr}", seed, lr, 0.0,
                              teacher_file, distill=d, schedule=sched)

        def record_calibration(name: str, seed: int, x: dict) -> None:
            """What weight: auto chose per term, next to the ratio it measured at weight 1 (grad_ratio_at_1)
            and its target: chosen weight x grad_ratio_at_1 = auto_ratio."""
            for m in name.split("+"):
                cal = (x["val"].get("distill_calibration") or {}).get(m)
                if cal:
                    key = m if "+" not in name else f"{name}:{m}"
                    calibration.setdefault(key, {})[f"{cal['weight']:.6g}"] = {
                        "grad_ratio_at_1": cal["grad_ratio_at_1"], "auto_ratio": cal["auto_ratio"],
                        "grad_ratio": cal["grad_ratio"], "seed": seed,
                        "params": (cal.get("params") or {}).get("set")}

        sweep: dict[str, dict[str, dict[int, float]]] = {}
        calibration: dict[str, dict[str, dict]] = {}
        runs: dict[str, dict[tuple[float, str], dict[int, dict]]] = {}
        chosen: dict[str, dict] = {}
        for m in CALIBRATED_METHODS:
            runs[m] = {}
            grid = list(c["ratios"])

            def try_point(r: float, clip: dict, m=m) -> None:
                key = (r, _clip_tag(clip))
                if key not in runs[m]:
                    runs[m][key] = {s: arm(m, r, clip, s) for s in sel}
                    sweep.setdefault(m, {})[f"{r:g}@{key[1]}"] = {s: x["val"]["map40"] for s, x in runs[m][key].items()}
                    for seed, x in runs[m][key].items():  # what weight: auto chose, and what it measured
                        record_calibration(m, seed, x)

            for r in grid:
                try_point(r, default_clip)
            if c["extend"]:  # the best point at an edge of the grid: points past it until it is inside
                extend_past_edges(grid, lambda r, tp=try_point: tp(r, default_clip),
                                  lambda m=m: max(runs[m], key=lambda k: mean_val(runs[m][k]))[0])
            best = max(runs[m], key=lambda k: mean_val(runs[m][k]))
            chosen[m] = {"ratio": best[0], "clip": default_clip}
        others = [m for m in CALIBRATED_METHODS if m != "fgfi"]
        best_other = max(others, key=lambda m: mean_val(runs[m][(chosen[m]["ratio"], _clip_tag(chosen[m]["clip"]))]))
        for m in ("fgfi", best_other):  # the clip mode is part of the sweep for these two
            for clip in c["clips"][1:]:
                try_point_r = chosen[m]["ratio"]
                key = (try_point_r, _clip_tag(clip))
                if key not in runs[m]:
                    runs[m][key] = {s: arm(m, try_point_r, clip, s) for s in sel}
                    sweep[m][f"{try_point_r:g}@{key[1]}"] = {s: x["val"]["map40"] for s, x in runs[m][key].items()}
            best = max(runs[m], key=lambda k: mean_val(runs[m][k]))
            chosen[m] = {"ratio": best[0], "clip": next(cl for cl in c["clips"] if _clip_tag(cl) == best[1])}
        for m in chosen:
            chosen[m]["val_map40"] = mean_val(runs[m][(chosen[m]["ratio"], _clip_tag(chosen[m]["clip"]))])
        # the combination, calibrated per term: each member at its chosen ratio x scale, the better member's clip
        combo = "+".join(COMBO)
        lead = max(COMBO, key=lambda m: chosen[m]["val_map40"])
        combo_clip = chosen[lead]["clip"]

        def combo_ratios(scale: float) -> dict[str, float]:
            return {m: round(chosen[m]["ratio"] * scale, 6) for m in COMBO}

        runs[combo] = {}
        for scale in c["combo_scales"]:
            key = (scale, _clip_tag(combo_clip))
            runs[combo][key] = {s: arm(combo, combo_ratios(scale), combo_clip, s) for s in sel}
            sweep.setdefault(combo, {})[f"x{scale:g}@{key[1]}"] = {s: x["val"]["map40"] for s, x in runs[combo][key].items()}
            for seed, x in runs[combo][key].items():
                record_calibration(combo, seed, x)
        best = max(runs[combo], key=lambda k: mean_val(runs[combo][k]))
        chosen[combo] = {"scale": best[0], "ratios": combo_ratios(best[0]), "clip": combo_clip,
                         "val_map40": mean_val(runs[combo][best])}
        # report: each chosen setting (and weight: auto at its default ratio, default clip) on test
        test: dict[str, dict[int, float]] = {"none": {s: runner.run(f"base-lr{lr}", s, lr, 0.0, None)["test"]["map40"]
                                                      for s in rep_seeds}}
        for m in CALIBRATED_METHODS:
            test[m] = {s: arm(m, chosen[m]["ratio"], chosen[m]["clip"], s)["test"]["map40"] for s in rep_seeds}
            test[f"{m}-auto"] = {s: arm(m, AUTO_DEFAULT_RATIO, default_clip, s)["test"]["map40"] for s in rep_seeds}
        test[combo] = {s: arm(combo, chosen[combo]["ratios"], combo_clip, s)["test"]["map40"] for s in rep_seeds}

    others = [*others, combo]  # a method or the combination may beat FGFI
    vs_fgfi = {m: claim(test[m], test["fgfi"], rep_seeds) for m in others}
    best = max(others, key=lambda m: chosen[m]["val_map40"])
    entry = {
        "family": args.family, "teacher": env["teacher"], "lr": lr,
        "command": f"python benchmarks/distill_methods.py --preset {args.preset} --family {args.family}",
        "ratios": c["ratios"], "clips": c["clips"], "select_seeds": sel, "report_seeds": rep_seeds,
        "calibration": calibration,
        "sweep": {m: {k: {str(s): v for s, v in by.items()} for k, by in pts.items()} for m, pts in sweep.items()},
        "chosen": chosen,
        "test_map40": {a: [test[a][s] for s in rep_seeds] for a in test},
        "vs_fgfi": vs_fgfi,
        "best_vs_fgfi": {"method": best, **{k: vs_fgfi[best][k] for k in ("per_seed", "mean", "ci95", "significant")}},
        "auto_weight": {m: {"auto_ratio": AUTO_DEFAULT_RATIO, "test_map40": [test[f"{m}-auto"][s] for s in rep_seeds],
                            "vs_swept_best": claim(test[f"{m}-auto"], test[m], rep_seeds)} for m in CALIBRATED_METHODS},
        "minutes": sum(runner.student_s) / 60, "total_minutes": (time.perf_counter() - t_start) / 60,
    }
    entry["goal_met"] = bool(entry["best_vs_fgfi"]["mean"] >= 1.0 and entry["best_vs_fgfi"]["ci95"][0] > 0)
    out = args.results / "distill_methods_calibrated.json"
    students = {}
    if out.is_file():
        try:
            old = json.loads(out.read_text())
            if old.get("preset") == args.preset:
                students = {k: v for k, v in old.get("students", {}).items() if isinstance(v, dict)}
        except ValueError:
            pass
    students[env["sarch"] if isinstance(env["sarch"], str) else env["sarch"]["arch"]] = entry
    result = {"preset": args.preset, **protocol_keys(rep_seeds), "selection_seeds": sel,
              "steps": {"student": env["plan"]["student_steps"], "batch": p["batch"]},
              "data": {**{f"{k}_images": v for k, v in env["n"].items()}, "data_hash": env["data_hash"]},
              "note": "short-schedule results (the base preset's steps), not the papers' 2x COCO schedules",
              "students": dict(sorted(students.items()))}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    md = render_calibrated_md(result)
    atomic_write_text(args.results / "distill_methods_calibrated.md", md)
    print(md, end="")
    return 0


def render_calibrated_md(result: dict) -> str:
    """``distill_methods_calibrated.md`` (and the docs block) from the JSON alone."""
    from compressdet.eval.stats import describe

    sel, rep_seeds = result["selection_seeds"], result["seeds"]
    md = [f"# Distillation methods, calibrated ({result['preset']} preset)", "",
          "Each method swept on the same grid of gradient ratios (`weight: auto`), chosen on val over seeds "
          f"{sel}, reported on test over seeds {rep_seeds}. Short-schedule results."]
    for name, st in result["students"].items():
        md += ["", f"## {name} ({st['family']})", "", "| arm | chosen (ratio, clip) | test mAP40 per seed | mean |",
               "|---|---|---|---|"]
        for a, v in st["test_map40"].items():
            ch = st["chosen"].get(a)
            label = ((f"{ch['ratio']:g}x" if "ratio" in ch else " + ".join(f"{m} {r:g}x" for m, r in ch["ratios"].items()))
                     + f", {_clip_tag(ch['clip'])}" if ch else ("auto, default ratio" if "auto" in a else ""))
            md.append(f"| {a} | {label} | {', '.join(f'{x:.2f}' for x in v)} | {statistics.mean(v):.2f} |")
        b = st["best_vs_fgfi"]
        md += ["", f"- best other method by val: **{b['method']}**; against FGFI on test: "
               f"{describe(st['vs_fgfi'][b['method']])}",
               f"- goal (beats FGFI by >= +1.0 with a CI above 0): {'met' if st['goal_met'] else 'not met'}"]
    return "\n".join(md) + "\n"


def _kept_students(path: Path, preset: str, seeds: list[int]) -> dict:
    """The other families' entries of an earlier result of the same preset and seeds (else none)."""
    import json

    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return {}
    if old.get("preset") != preset or old.get("seeds") != seeds:
        return {}
    return {k: v for k, v in old.get("students", {}).items() if isinstance(v, dict) and "family" in v}


def _bar_chart(test: dict, seeds: list[int], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(test)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    means = [statistics.mean(test[a][s] for s in seeds) for a in arms]
    ax.bar(range(len(arms)), means, color=[f"C{i}" for i in range(len(arms))], alpha=0.6)
    for i, a in enumerate(arms):
        ax.plot([i] * len(seeds), [test[a][s] for s in seeds], "ko", ms=4)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("test mAP40 (bar: mean, dots: seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
