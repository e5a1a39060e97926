"""Prune benchmark: the 0.5x imitation student pruned to <= 60% of its backbone MACs, fine-tuned
with and without imitation, against an equal-budget control, on SynthKITTI; test-split mAP drop
with paired-seed CIs and ONNX Runtime fp32 speed-up (issue 7 targets: map_drop <= 1.0 with
imitation, ort_speedup >= 1.3, macs_ratio <= 0.6).

Evidence protocol (``benchmarks/_protocol.py``, issue 19): everything chosen is chosen on ``val``,
every reported number is measured once on the whole ``test`` split of the final chosen model.

1. the 1x teacher: the imitation benchmark's (``cpu``/``gpu``: ``_reuse.imitation_teacher``, same
   SynthKITTI set, input size, batch and threads; its test mAP is measured here, cached), or for
   ``smoke`` a tiny one trained here;
2. per seed (>= 3 paired seeds: same initialisation and batch order within a seed): the 0.5x
   imitation student (>= 3 passes over the training set; imitation weight = the imitation
   benchmark's choice on val), its best-on-val checkpoint;
3. selection on seed 0, on val, the same number of tried settings for every arm: each fine-tune
   arm chooses its fine-tune lr from ``ft_lr`` (the prune stage's 0.005 first: ties keep it).
   The arms: ``pruned`` (the student pruned to 0.6 MACs, fine-tuned with imitation: the default),
   ``pruned_noimit`` (the same without imitation) and ``student_ft`` (the unpruned student
   fine-tuned with the same steps and imitation: the equal-budget control, since a short student
   still improves). Each seed's student is pruned once (:func:`prune_once`: the ``prune`` stage's
   ``build_pruner`` with the stage's defaults) and every fine-tune is a ``train`` stage from a
   ``model_file`` (the same ``fit_stage`` the prune stage fine-tunes with), so the pruned arms of a
   seed start from the identical network. Fixed, not chosen (the prune stage's defaults):
   depthwise_align 4, latency allocation, group-magnitude importance; the imitation weight is the
   imitation benchmark's choice on val;
4. seeds 1.. rerun each arm with its chosen lr; each final model is evaluated once on test (cached
   by sha256). Claims (paired by seed, 95% t interval, ``compressdet.eval.stats``): ``map_drop``
   (student - pruned), ``map_drop_vs_equal_budget`` (student_ft - pruned), ``imitation_effect``
   (pruned - pruned_noimit), ``map_drop_without_imitation`` (student - pruned_noimit).
5. speed: seed 0's trained student and pruned model exported through the exporter's fast exact
   fp32 path (``export_onnx``, ``fp32_rewrites`` on; ``fast_fp32``), ORT at its default
   ORT_ENABLE_ALL, batch 1, each model in a process of its own (``compare_onnx_isolated``), at the
   run's input size (``ort_speedup``) and at 384x1248 (``ort_speedup_384x1248``).

Writes benchmarks/results/prune.{json,md} and prune_curves.png (val mAP40 vs step: students, then
each fine-tune arm from the student's last step on). Every run folder is resumed and every test
evaluation and timing cached (``--work``): killed, it continues where it stopped.

    python benchmarks/prune.py --preset smoke     # ~3 min on a loaded 2-core VM, plumbing only
    python benchmarks/prune.py --preset cpu       # 2-core budget, ~2.5-3.5 h (resumable); needs
                                                  # benchmarks/imitation_gain.py --preset cpu first
    python benchmarks/prune.py --preset gpu       # the seed's 384x1248 / batch 32 schedule (CUDA),
                                                  # after imitation_gain.py --preset gpu
    python benchmarks/prune.py --preset latency   # no training: untrained 0.5x pruned to 0.6 MACs
                                                  # (allocations / clip ranges), ORT at 384x1248

``cpu``: the imitation benchmark's cpu data (1,000 train / 500 val / 1,000 test SynthKITTI at
192x624, batch 2, 2 threads, no augmentation), students 1,500 steps (3 passes), each fine-tune 500
steps (1 more pass), 3 fine-tune lrs x 3 arms on seed 0, 3 arms on each other seed: 3 students +
15 fine-tunes.

``latency`` (untrained models): each model in a fresh process of its own, models alternating over
3 rounds (the headline); also one process with the models in alternating blocks of 5 runs, and
single runs interleaved round-robin in one process (biased: an idle ORT session's worker threads
keep spinning after its run and slow the next session's).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:  # _protocol, _reuse, imitation_gain
    sys.path.insert(0, str(ROOT / "benchmarks"))

from _protocol import run_digest as _digest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FULL_SIZE = [384, 1248]
_SMOKE_DATA = {"format": "synth", "image_size": [64, 192], "synth": {"num_images": 24, "size": [384, 128]},
               "cache": True, "augment": {"enabled": False}}
# teacher: "reuse" (the imitation benchmark's, same preset) or steps trained here. *_steps fixed or
# *_passes over the training set. ft_lr: the options every fine-tune arm chooses from on val (seed 0).
PRESETS = {
    "smoke": {"teacher": 4, "student_steps": 4, "ft_steps": 3, "ft_lr": [0.005, 0.01], "seeds": [0, 1, 2],
              "weight": 1.0, "student_evals": 2, "ft_evals": 1, "runs": 3, "data": _SMOKE_DATA, "batch": 2,
              "threads": 1, "channels_last": True, "device": "cpu", "feature_cache": False},
    "cpu": {"teacher": "reuse", "student_passes": 3, "ft_passes": 1, "ft_lr": [0.005, 0.0025, 0.01],
            "seeds": [0, 1, 2], "student_evals": 6, "ft_evals": 4, "runs": 50, "device": "cpu",
            "feature_cache": True},
    "gpu": {"teacher": "reuse", "student_steps": 40000, "ft_steps": 10000, "ft_lr": [0.005, 0.0025, 0.01],
            "seeds": [0, 1, 2], "student_evals": 80, "ft_evals": 20, "runs": 50, "device": "auto",
            "feature_cache": False},
}
ARMS = ("pruned", "pruned_noimit", "student_ft")
ARM_LABELS = {"student": "0.5x-I student", "pruned": "pruned (0.6 MACs) + fine-tune with imitation",
              "pruned_noimit": "pruned + fine-tune without imitation",
              "student_ft": "student + the same fine-tune (equal budget)"}


PROTOCOLS = {  # how ORT latency is timed; the first is the headline (ort_ms, ort_speedup)
    "isolated": "each model in a fresh process of its own, models alternating over 3 rounds",
    "blocks": "one process, models alternating in blocks of 5 runs (first run of a block dropped)",
    "interleaved": "one process, single runs round-robin (biased: idle sessions' spinning threads slow the timed one)",
}


def _ort_compare_ms(models: dict[str, torch.nn.Module], hw: list[int], runs: int, threads: int = 2, *,
                    protocols: tuple[str, ...] = ("isolated", "blocks")) -> dict[str, dict[str, float]]:
    """Median ORT fp32 latency (ms) per model, ``{protocol: {model: ms}}`` (:data:`PROTOCOLS`)."""
    from _protocol import export_fast_fp32

    from compressdet.bench.latency import compare_latency, compare_onnx_isolated
    from compressdet.export.runtime import ort_session

    x = torch.zeros(1, 3, *hw)
    feed = {"images": x.numpy()}
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for name, model in models.items():  # the fastest exact fp32 graph of each (fp32_rewrites)
            paths[name] = Path(d) / f"{name}.onnx"
            export_fast_fp32(model.eval(), paths[name], hw)
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
            "ort_speedup_384x1248": base / ms["pruned_latency"], "allocation": info, "fp32_rewrites": True,
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



# --------------------------------------------------------------------------------------------
# The protocol run (smoke / cpu / gpu)
# --------------------------------------------------------------------------------------------


def _settings(args, p: dict) -> dict:
    """Data, batch, threads, memory format, teacher file and imitation weight of the preset."""
    if p["teacher"] == "reuse":
        from _reuse import imitation_teacher
        from imitation_gain import rel_to_root

        r = imitation_teacher(args.imitation_results)
        if r["preset"] != args.preset:
            raise SystemExit(f"{args.imitation_results}: from the imitation benchmark's '{r['preset']}' preset; "
                             f"run benchmarks/imitation_gain.py --preset {args.preset} first (or pass its results "
                             "with --imitation-results)")
        return {"data": r["data"], "batch": r["batch"], "threads": r["threads"], "channels_last": r["channels_last"],
                "eval_images": r["eval_images"], "teacher": Path(r["teacher"]), "weight": r["best_weight"],
                "teacher_source": f"imitation benchmark ({rel_to_root(args.imitation_results)})"}
    return {"data": copy.deepcopy(p["data"]), "batch": p["batch"], "threads": p["threads"],
            "channels_last": p["channels_last"], "eval_images": None, "teacher": None, "weight": p["weight"],
            "teacher_source": f"trained here ({p['teacher']} steps)"}


def _sched(s: dict, steps: int, n_evals: int, lr: float) -> dict:
    every = max(steps // max(n_evals, 1), 1)
    out = {"steps": steps, "batch_size": s["batch"], "lr": lr, "eval_every": every, "checkpoint_every": every,
           "log_every": min(20, steps), "channels_last": s["channels_last"]}
    return {**out, "threads": s["threads"]} if s["threads"] else out


def _eval_cfg(s: dict) -> dict:
    ev = {"batch_size": 16, "num_images_logged": 0}
    return {**ev, "max_images": s["eval_images"]} if s["eval_images"] else ev


def _steps(p: dict, who: str, n_train: int, batch: int) -> int:
    import math

    fixed = p.get(f"{who}_steps")
    return int(fixed) if fixed else max(2, math.ceil(p[f"{who}_passes"] * n_train / batch))


def prune_once(student_file: Path, hw: list[int], folder: Path) -> tuple[Path, dict]:
    """The student pruned to 0.6 backbone MACs exactly as the ``prune`` stage prunes with its defaults
    (``build_pruner``: group-magnitude importance, latency allocation, depthwise_align 4; one
    round), before any fine-tune; cached by the student's sha256. Every fine-tune arm of a seed
    starts from this one network, so the arms differ only in their fine-tune (and pruning, which
    costs more than a smoke fine-tune, runs once per seed)."""
    from compressdet._io import atomic_write_json, sha256_file
    from compressdet.models import load_model, save_model
    from compressdet.recipe import PruneStage
    from compressdet.stages.prune import build_pruner

    cfg = PruneStage(name="pruned", **{"from": "student", "target": {"macs": 0.6}})
    sha = sha256_file(student_file)
    out, info = folder / f"pruned-{sha[:16]}.pt", folder / f"pruned-{sha[:16]}.json"
    if out.is_file() and info.is_file():
        return out, json.loads(info.read_text())
    model, _ = load_model(student_file)
    model.train()
    t = cfg.target
    rec = build_pruner(model, tuple(hw), importance=cfg.importance, target_macs=t.macs, pruning_ratio=t.pruning_ratio,
                       pruning_ratio_dict=t.pruning_ratio_dict, iterative_steps=cfg.iterative_steps,
                       ignored_layers=cfg.ignored_layers, round_to=cfg.round_to, allocation=cfg.allocation,
                       weight_range=cfg.latency_weight_range, depthwise_align=cfg.depthwise_align).step()
    meta = {"importance": cfg.importance, "allocation": cfg.allocation, "depthwise_align": cfg.depthwise_align,
            "latency_weight_range": list(cfg.latency_weight_range), "target_macs": t.macs,
            "macs_ratio": rec["macs_after"] / rec["base_macs"], "student_sha256": sha}
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model.eval(), out, meta={"pruned": meta})
    atomic_write_json(info, meta)
    return out, meta


def protocol(args: argparse.Namespace) -> dict:
    from _protocol import (
        best,
        chosen_line,
        claim,
        export_fast_fp32,
        history,
        isolated_ms,
        plot_learning_curves,
        protocol_keys,
        test_map,
    )
    from imitation_gain import _run, bench_ledger, model_file, rel_to_root, teacher_feature_cache

    from compressdet._io import sha256_file
    from compressdet.data import build_dataset, prepare_data
    from compressdet.eval.stats import describe
    from compressdet.models import load_model, model_summary
    from compressdet.recipe import DataConfig

    p = copy.deepcopy(PRESETS[args.preset])
    if args.seeds:
        p["seeds"] = list(range(args.seeds))
    s = _settings(args, p)
    seeds, s0 = p["seeds"], p["seeds"][0]
    work = Path(args.work or ROOT / "benchmarks" / ".prune") / args.preset
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    ledger = bench_ledger("prune", args)
    test_dir = ledger.test_dir or work / "test_eval"
    pruned_dir = ledger.cache_dir("pruned0", work / "pruned0")
    t_start = time.perf_counter()
    data_cfg = DataConfig(**s["data"])
    prepare_data(data_cfg)
    n = {split: len(build_dataset(data_cfg, split, train=False)) for split in ("train", "val", "test")}
    student_steps = _steps(p, "student", n["train"], s["batch"])
    ft_steps = _steps(p, "ft", n["train"], s["batch"])
    hw = list(s["data"]["image_size"])
    base = {"device": p["device"], "data": s["data"]}
    ev = _eval_cfg(s)
    print(f"plan: students {student_steps} steps ({student_steps * s['batch'] / n['train']:.1f} passes), fine-tunes "
          f"{ft_steps} steps, batch {s['batch']}, seeds {seeds}; {n['train']} train / {n['val']} val (selection) / "
          f"{n['test']} test (report) images", flush=True)

    # 1. teacher
    if s["teacher"] is None:
        trecipe = {**base, "seed": 0, "stages": [{"name": "teacher", "kind": "train", "model": {"arch": "shuffledet_1x"},
                                                   "schedule": _sched(s, p["teacher"], 1, 0.02), "eval": ev}]}
        trecipe["name"] = f"teacher-{_digest(trecipe)}"
        tman = _run(trecipe, work, ledger)
        s["teacher"] = model_file(work, tman, "teacher", ledger)
    teacher, teacher_sha = s["teacher"], sha256_file(s["teacher"])
    teacher_test = test_map(teacher, s["data"], test_dir)
    tstage = {"name": "teacher", "kind": "model_file", "path": str(teacher), "sha256": teacher_sha}
    w = s["weight"]
    key = _digest({"t": teacher_sha, "p": p, "s": {k: v for k, v in s.items() if k not in ("teacher", "teacher_source")}})

    runs: dict[str, dict[int, dict]] = {a: {} for a in ("student", *ARMS)}
    sweeps: dict[str, dict] = {}
    chosen: dict[str, dict] = {}

    def finish(man: dict, stage: str, **extra) -> dict:
        """A run's val metrics and model; no test evaluation here: only the chosen runs are evaluated on
        test, after every selection is made."""
        f = model_file(work, man, stage, ledger)
        return {"val": man["stages"][stage]["metrics"], "model": rel_to_root(f), **extra}

    def student(seed: int) -> dict:
        st = {"name": "student", "kind": "train", "model": {"arch": "shuffledet_0.5x"}, "teacher": "teacher",
              "imitation": {"weight": w}, "schedule": _sched(s, student_steps, p["student_evals"], 0.02), "eval": ev}
        man = _run({**base, "seed": seed, "name": f"student-s{seed}-{key}", "stages": [tstage, st]}, work, ledger)
        return finish(man, "student")

    pruned0: dict[int, tuple[Path, dict]] = {}

    def arm(name: str, seed: int, lr: float) -> dict:
        """One fine-tune arm: ``train`` from the seed's student (``student_ft``) or from its pruned
        network (``pruned``, ``pruned_noimit``), the same schedule for all."""
        if name == "student_ft":
            start = ROOT / runs["student"][seed]["model"]
        else:
            if seed not in pruned0:
                pruned0[seed] = prune_once(ROOT / runs["student"][seed]["model"], hw, pruned_dir)
            start = pruned0[seed][0]
        stages = [tstage, {"name": "start", "kind": "model_file", "path": str(start), "sha256": sha256_file(start)}]
        st = {"name": name, "kind": "train", "from": "start", "schedule": _sched(s, ft_steps, p["ft_evals"], lr),
              "eval": ev}
        st.update({"imitation": {"weight": 0.0}} if name == "pruned_noimit" else
                  {"teacher": "teacher", "imitation": {"weight": w}})
        man = _run({**base, "seed": seed, "name": f"{name}-lr{lr}-s{seed}-{key}", "stages": stages + [st]}, work, ledger)
        return finish(man, name, lr=lr, macs_ratio=1.0 if name == "student_ft" else pruned0[seed][1]["macs_ratio"])

    t0 = time.perf_counter()
    with teacher_feature_cache(work / "feature_cache", n["train"], enabled=p["feature_cache"]):
        for seed in seeds:  # 2. the students
            runs["student"][seed] = student(seed)
        for name in ARMS:  # 3. selection on val, seed s0: each arm its fine-tune lr, from the same options
            tried = {lr: arm(name, s0, lr) for lr in p["ft_lr"]}
            scores = {str(lr): r["val"]["map40"] for lr, r in tried.items()}
            lr = best(p["ft_lr"], scores)
            runs[name][s0], sweeps[name], chosen[name] = tried[lr], {"ft_lr": scores}, {"ft_lr": lr}
        for seed in seeds[1:]:  # 4. the other paired seeds with the chosen settings
            for name in ARMS:
                runs[name][seed] = arm(name, seed, chosen[name]["ft_lr"])
    train_minutes = (time.perf_counter() - t0) / 60
    for by in runs.values():  # 5. the chosen runs of every arm and seed, once each on test
        for r in by.values():
            r["test"] = test_map(ROOT / r["model"], s["data"], test_dir)  # rel_to_root: relative or absolute

    test = {a: {sd: r["test"]["map40"] for sd, r in by.items()} for a, by in runs.items()}
    val = {a: {sd: r["val"]["map40"] for sd, r in by.items()} for a, by in runs.items()}
    claims = {"map_drop": claim(test["student"], test["pruned"], seeds),
              "map_drop_vs_equal_budget": claim(test["student_ft"], test["pruned"], seeds),
              "imitation_effect": claim(test["pruned"], test["pruned_noimit"], seeds),
              "map_drop_without_imitation": claim(test["student"], test["pruned_noimit"], seeds),
              "map_drop_vs_equal_budget_without_imitation": claim(test["student_ft"], test["pruned_noimit"], seeds)}

    # 5. speed: seed s0's trained student and pruned model, fast exact fp32 graphs, isolated processes
    loaded = {k: load_model(ROOT / runs[k][s0]["model"])[0].eval() for k in ("student", "pruned")}
    summ = {k: model_summary(m, tuple(hw)) for k, m in loaded.items()}
    speed, ms, rewrites = {}, {}, None
    for label, size in (("run", hw), ("384x1248", FULL_SIZE)):  # weights don't depend on the input size
        graphs = {}
        for k, m in loaded.items():
            g = work / "onnx" / f"{k}-s{s0}-{Path(runs[k][s0]['model']).parent.parent.name}-{size[0]}x{size[1]}.onnx"
            if not g.is_file():
                rewrites = export_fast_fp32(m, g, size)["fp32_rewrites"]
            graphs[k] = g
        ms[label] = isolated_ms(graphs, work / "latency", runs=args.runs or p["runs"], threads=args.threads)
        speed[label] = ms[label]["student"]["median_ms"] / ms[label]["pruned"]["median_ms"]
    curves = {"student (0.5x-I)": {sd: history(r["val"]) for sd, r in runs["student"].items()}}
    for a in ARMS:  # fine-tunes start where the student stopped
        curves[a] = {sd: [(student_steps + st, v) for st, v in history(r["val"])] for sd, r in runs[a].items()}
    plot_learning_curves(curves, out_dir / "prune_curves.png",
                         title=f"Prune benchmark ({args.preset}): val mAP40 while training")
    mean = lambda d: statistics.mean(d[sd] for sd in seeds)  # noqa: E731
    macs = {sd: runs["pruned"][sd]["macs_ratio"] for sd in seeds}
    res = {
        "preset": args.preset, **protocol_keys(seeds), "image_size": hw, "threads": args.threads,
        "map40": {a: [test[a][sd] for sd in seeds] for a in runs} | {"1x": teacher_test["map40"]},
        "val_map40": {a: [val[a][sd] for sd in seeds] for a in runs},
        "claims": claims, **{k: c["mean"] for k, c in claims.items()},  # top level: the test-split means
        "macs_ratio": statistics.mean(macs.values()), "macs_ratio_per_seed": [macs[sd] for sd in seeds],
        "backbone_macs": {k: v["macs"]["backbone"] for k, v in summ.items()},
        "params": {k: v["params"]["total"] for k, v in summ.items()},
        "ort_speedup": speed["run"], "ort_speedup_384x1248": speed["384x1248"],
        "ort_ms": {k: v["median_ms"] for k, v in ms["run"].items()},
        "ort_ms_384x1248": {k: v["median_ms"] for k, v in ms["384x1248"].items()},
        "latency_protocol": PROTOCOLS["isolated"] + f"; seed {s0}'s trained models; ORT_ENABLE_ALL (ORT's default)",
        "fp32_rewrites": rewrites if rewrites is not None else True,
        "chosen": chosen, "sweeps_seed0_val": sweeps,
        "fixed": {"imitation_weight": w, "depthwise_align": 4, "allocation": "latency", "target_macs": 0.6,
                  "student_lr": 0.02},
        "steps": {"student": student_steps, "fine_tune": ft_steps, "batch": s["batch"],
                  "student_passes": student_steps * s["batch"] / n["train"],
                  "fine_tune_passes": ft_steps * s["batch"] / n["train"]},
        "data": {"train_images": n["train"], "val_images": n["val"], "test_images": n["test"], "image_size": hw,
                 "synth": s["data"].get("synth")},
        "teacher": {"source": s["teacher_source"], "model": rel_to_root(teacher), "sha256": teacher_sha,
                    "test": teacher_test},
        "ledger": {"path": rel_to_root(ledger.root), "runs": ledger.entries()} if ledger.root else None,
        "test_ap40_seed0": {a: runs[a][s0]["test"]["ap40"] for a in runs},
        "models": {a: {str(sd): r["model"] for sd, r in by.items()} for a, by in runs.items()},
        "eval_history": {k: {str(sd): v for sd, v in by.items()} for k, by in curves.items()},
        "train_minutes_this_invocation": train_minutes, "minutes": (time.perf_counter() - t_start) / 60,
        "command": f"python benchmarks/prune.py --preset {args.preset}",
        "targets": {"macs_ratio": "<= 0.6", "map_drop": "<= 1.0", "ort_speedup": ">= 1.3"},
    }
    lines = [f"# Prune benchmark ({args.preset})", "", f"`{res['command']}`", "",
             f"SynthKITTI {n['train']} train / {n['val']} val (every selection) / {n['test']} test (reported once), "
             f"{hw[0]}x{hw[1]}, batch {s['batch']}; students {student_steps} steps "
             f"({res['steps']['student_passes']:.1f} passes), fine-tunes {ft_steps} steps; seeds {seeds}; teacher "
             f"{s['teacher_source']}, test mAP40 {teacher_test['map40']:.2f}.", "",
             "| model | chosen on val (seed 0) | test mAP40 per seed | mean |", "|---|---|---|---|"]
    for a in runs:
        c = f"fine-tune lr {chosen[a]['ft_lr']}" if a in chosen else "lr 0.02 (fixed)"
        lines.append(f"| {ARM_LABELS[a]} | {c} | {', '.join(f'{test[a][sd]:.2f}' for sd in seeds)} | "
                     f"{mean(test[a]):.2f} |")
    lines += [""] + [f"- {k}: {describe(c)}" for k, c in claims.items()]
    lines += [f"- macs_ratio {res['macs_ratio']:.3f}; ORT fp32 (fast exact graphs, isolated processes) speed-up "
              f"{speed['run']:.2f}x at {hw[0]}x{hw[1]}, {speed['384x1248']:.2f}x at 384x1248",
              f"- chosen on val: {chosen_line(chosen, sweeps)}",
              "- learning curves (val mAP40 vs step, every arm and seed): prune_curves.png"]
    _write(out_dir, res, lines)
    print("\n".join(lines))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS) + ["latency"], default="smoke")
    ap.add_argument("--work", default=None, help="run folders, test evaluations and timings, resumed on re-runs "
                    "(default benchmarks/.prune/<preset>)")
    ap.add_argument("--imitation-results", type=Path, default=RESULTS / "imitation_gain.json",
                    help="(cpu/gpu) the imitation benchmark's results JSON whose teacher is reused")
    ap.add_argument("--results", "--out", dest="out", default=str(RESULTS), help="where prune.{json,md} and "
                    "prune_curves.png go")
    ap.add_argument("--seeds", type=int, help="(checks only) number of paired seeds (default 3)")
    ap.add_argument("--ledger", type=Path, help="committed record of finished runs (default: "
                    "benchmarks/ledger/prune/<preset> for cpu/gpu, none for smoke)")
    ap.add_argument("--no-ledger", action="store_true", help="neither read nor write the ledger")
    ap.add_argument("--runs", type=int, default=None, help="latency runs per model (median; preset: 50)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    args = ap.parse_args(argv)
    if args.preset != "latency":
        protocol(args)
        return 0
    torch.set_num_threads(1)
    args.runs = args.runs or 30
    res = _latency_only(args)
    ms = res["ort_ms"]
    bp = res["by_protocol"]
    lines = [f"# Prune latency (untrained 0.5x -> 0.6 backbone MACs, 384x1248, ORT fp32 {args.threads} threads, "
             f"median of {args.runs} runs, fast exact fp32 graphs)", "",
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


if __name__ == "__main__":
    sys.exit(main())
