"""The whole chain against what a user gets without it (issue #42): one accuracy-latency table and chart.

Declared on the shared runner (``_declare.py``): every model of the ShuffleDet and FCOS chains is an arm,
chosen on val (mean of the seeds), tested once per seed, and deployed the way ``compressdet deploy``
chooses (the fastest runtime / precision within ``max_map_drop`` of PyTorch fp32, each candidate timed in
processes of its own) at the run's input size and at 384x1248.

``cpu`` arms: ShuffleDet 1x teacher; 0.5x and 0.25x trained directly; 0.5x-I and 0.25x-I (imitation of
the 1x); each -I pruned at two backbone-MACs targets with imitation fine-tuning; each pruned model QAT
INT8. FCOS: its teacher; its student directly and distilled (FGFI); distilled + pruned; + INT8. 3 seeds.
``smoke``: the plumbing only (tiny SynthKITTI at 64x192, a few steps, 2 seeds, ShuffleDet 0.25x arms).

Writes ``benchmarks/results/pareto.{json,md,png}`` (smoke: ``<work>/smoke/results``). JSON: ``points``
(model, chain, backend, precision, latency_ms, map per seed, mean, ci95), ``front`` (models on the
Pareto front, fastest first), ``compression_for_free`` (each chain-final model against the undistilled
student of the architecture it started from: paired test-mAP difference, deployed speed ratio),
``dominates_direct`` (each directly trained student: is a compressdet model at least as accurate and at
least as fast) and ``goals``.

    python benchmarks/pareto.py --preset smoke   # plumbing (~10-15 min on one loaded core: 5 deploys)
    python benchmarks/pareto.py --preset cpu     # hours, resumable (ledger benchmarks/ledger/pareto/cpu)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import imitation_gain as ig  # noqa: E402
from _declare import Arm, Bench, Runner, mean_ci, plot_accuracy_latency  # noqa: E402
from _ledger import Ledger  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FULL_SIZE = [384, 1248]
GOAL_SPEEDUP = 3.0

PRESETS = {
    "smoke": {"ig": "smoke", "seeds": [0, 1], "teacher_steps": 3, "student_steps": 2, "ft_steps": 2, "qat_steps": 2,
              "lr": [0.01], "weight": [1.0], "ft_lr": [0.005], "macs": [0.6], "fcos": False, "evals": 1,
              "deploy_sizes": [[64, 192]],
              "deploy": {"runs": 2, "rounds": 1, "warmup": 1, "threads": 1, "calibration_images": 2,
                         "max_map_drop": 0.5, "eval": {"batch_size": 16}}},
    "cpu": {"ig": "cpu", "seeds": [0, 1, 2], "teacher_passes": 12, "student_passes": 3, "ft_passes": 1,
            "qat_passes": 0.5, "lr": [0.02, 0.01], "weight": [1.0, 0.5], "ft_lr": [0.005, 0.01],
            "macs": [0.6, 0.4], "fcos": True, "evals": 6, "deploy_sizes": [[192, 624], FULL_SIZE],
            "deploy": {"runs": 60, "rounds": 3, "warmup": 5, "threads": 2, "calibration_images": 64,
                       "max_map_drop": 0.5, "eval": {"batch_size": 16}}},
}


def _steps(p: dict, who: str, n_train: int, batch: int) -> int:
    fixed = p.get(f"{who}_steps")
    return int(fixed) if fixed else max(2, round(p[f"{who}_passes"] * n_train / batch))


def declare(preset: str, n_train: int, data_hash: str) -> Bench:
    """The arms of ``preset``. Stage names: inputs ``parent`` / ``teacher``, the arm's model ``model``."""
    p, igp = PRESETS[preset], ig.PRESETS[PRESETS[preset]["ig"]]
    steps = {w: _steps(p, w, n_train, igp["batch"]) for w in ("teacher", "student", "ft", "qat")}
    data = ig._data(igp, True)

    def train(arch, lr, n=steps["student"], **extra) -> dict:
        return ig._stage("model", arch, n, igp, p["evals"], lr=lr, **extra)

    def finetune(kind: str, n: int, lr: float, distill: dict, **extra) -> dict:
        st = train("-", lr, n)  # the same schedule / eval blocks as a train stage
        return {"name": "model", "kind": kind, "from": "parent", "teacher": "teacher", **distill,
                "schedule": st["schedule"], "eval": st["eval"], **extra}

    def teacher_arm(name: str, arch: str, chain: str, lr: float | None) -> Arm:
        def recipe(setting, seed, inputs):  # the very run imitation_gain / distill_methods name: reused
            return ig.make_teacher_recipe(igp, arch, steps["teacher"], data_hash, lr=lr)
        return Arm(name, lambda s: [ig._stage("teacher", arch, steps["teacher"], igp, igp["teacher_evals"], lr=lr)],
                   chain=chain, seeds=[0], recipe=recipe, tags={"role": "teacher"})

    arms: list[Arm] = []

    def chain(family: str, teacher: str, t_arch: str, t_lr, students: dict[str, str], imitate, macs: list) -> None:
        arms.append(teacher_arm(teacher, t_arch, family, t_lr))
        for size, arch in students.items():
            direct = Arm(size, lambda s, a=arch: [train(a, s["lr"])], chain=family,
                         grid=[{"lr": lr} for lr in p["lr"]], tags={"role": "direct"})
            distilled = Arm(f"{size}-I", lambda s, a=arch: [train(a, p["lr"][0], teacher="teacher", **imitate(s["w"]))],
                            chain=family, teacher=teacher, grid=[{"w": w} for w in p["weight"]],
                            tags={"role": "compressdet", "baseline": size})
            arms.extend([direct, distilled])
            for m in macs:
                pruned = Arm(f"{size}-I-p{m}", lambda s, m=m: [finetune("prune", steps["ft"], s["lr"], imitate(1.0),
                                                                         target={"macs": m})],
                             chain=family, parent=distilled.name, teacher=teacher,
                             grid=[{"lr": lr} for lr in p["ft_lr"]], tags={"role": "compressdet", "baseline": size})
                int8 = Arm(f"{pruned.name}-int8", lambda s: [finetune("qat", steps["qat"], 0.001, imitate(1.0))],
                           chain=family, parent=pruned.name, teacher=teacher,
                           tags={"role": "compressdet", "baseline": size, "final": True})
                arms.extend([pruned, int8])

    def fgfi(w: float) -> dict:
        return {"imitation": {"weight": w}}

    sd_students = {"0.25x": "shuffledet_0.25x"} if preset == "smoke" else {"0.5x": "shuffledet_0.5x",
                                                                           "0.25x": "shuffledet_0.25x"}
    chain("shuffledet", "1x", "shuffledet_1x", None, sd_students, fgfi, p["macs"])
    if p["fcos"]:  # FCOS: one MACs target (the issue's "distilled + pruned, + INT8")
        chain("fcos", "fcos", "fcos_mnv3_large", 0.01, {"fcos-s": "fcos_mnv2_050"},
              lambda w: {"distill": [{"method": "fgfi", "weight": w}]}, p["macs"][:1])
    claims = {f"{a.name} - {a.tags['baseline']}": (a.name, a.tags["baseline"])
              for a in arms if a.tags.get("role") == "compressdet"}
    reuse = [] if preset == "smoke" else [Ledger.for_bench(b, preset) for b in ("imitation_gain", "distill_methods",
                                                                                 "prune", "quant")]
    return Bench("pareto", preset, data, p["seeds"], arms, claims=claims, deploy_sizes=p["deploy_sizes"],
                 deploy=p["deploy"], device=igp["device"], reuse=reuse)


# -------------------------------------------------------------------------------------------- the analysis
def dominates(q: dict, p: dict) -> bool:
    """``q`` at least as accurate and at least as fast as ``p``, strictly better in one."""
    return (q["mean"] >= p["mean"] and q["latency_ms"] <= p["latency_ms"]
            and (q["mean"] > p["mean"] or q["latency_ms"] < p["latency_ms"]))


def pareto_front(points: list[dict]) -> list[str]:
    """The models no other point dominates, fastest first."""
    on = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return [p["model"] for p in sorted(on, key=lambda p: (p["latency_ms"], -p["mean"]))]


def dominates_direct(points: list[dict]) -> dict:
    """Per directly trained student: the most accurate compressdet model at least as accurate and at least as
    fast (``{dominated, by}``; ``by`` None when none is)."""
    out = {}
    for d in (p for p in points if p["role"] == "direct"):
        by = [q for q in points if q["role"] == "compressdet" and q["mean"] >= d["mean"]
              and q["latency_ms"] <= d["latency_ms"]]
        top = max(by, key=lambda q: (q["mean"], -q["latency_ms"]), default=None)
        out[d["model"]] = {"dominated": top is not None, "by": None if top is None else top["model"]}
    return out


def compression_for_free(points: list[dict], seeds: list[int]) -> list[dict]:
    """Each chain-final model against its undistilled student: paired test-mAP difference and speed ratio
    (each on its own deployed candidate)."""
    from _protocol import claim

    by = {p["model"]: p for p in points}
    out = []
    for f in (p for p in points if p.get("final")):
        b = by[f["baseline"]]
        c = claim(dict(zip(f["seeds"], f["map"])), dict(zip(b["seeds"], b["map"])), seeds)
        out.append({"model": f["model"], "baseline": b["model"],
                    "map_diff": {k: c[k] for k in ("per_seed", "mean", "ci95")},
                    "speedup": b["latency_ms"] / f["latency_ms"]})
    return out


def goals(cff: list[dict], dom: dict) -> dict:
    free = [c["model"] for c in cff if c["map_diff"]["ci95"][0] >= 0 and c["speedup"] >= GOAL_SPEEDUP]
    return {"chain_final_as_accurate_at_3x": {"met": bool(free), "by": free},
            "every_direct_student_dominated": {"met": bool(dom) and all(v["dominated"] for v in dom.values()),
                                               "not_dominated": [k for k, v in dom.items() if not v["dominated"]]}}


def points_of(res: dict, sizes: list[list[int]]) -> list[dict]:
    """One point per deployed arm: the deployed candidate at the run size (and the second size's latency)."""
    from compressdet.eval.table import size_cells
    from compressdet.models import load_model
    from compressdet.models.summary import model_summary

    run_key = f"{sizes[0][0]}x{sizes[0][1]}"
    out = []
    for name, a in res["arms"].items():
        if not a["deploy"]:
            continue
        dep = a["deploy"][run_key]
        seeds = a["seeds"]
        maps = [a["test_map40"][s] for s in seeds]
        mean, ci = mean_ci(maps)
        model, _ = load_model(a["size_model"])
        flops, params = size_cells(model_summary(model, tuple(FULL_SIZE)), params_digits=4)
        out.append({"model": name, "chain": a["chain"], "role": a["tags"].get("role"), "final": a["tags"].get("final", False),
                    "baseline": a["tags"].get("baseline"), "backend": dep["chosen"], "precision": dep["precision"],
                    "latency_ms": dep["latency_ms"], "map_drop_deployed": dep["map_drop"],
                    "latency_ms_by_size": {k: v["latency_ms"] for k, v in a["deploy"].items()},
                    "backend_by_size": {k: v["chosen"] for k, v in a["deploy"].items()},
                    "seeds": seeds, "map": maps, "mean": mean, "ci95": ci, "flops": flops, "params": params,
                    "ap40_seed0": a["test_ap40"][seeds[0]], "chosen": a["chosen"]})
    return out


def report(res: dict, bench: Bench) -> dict:
    pts = points_of(res, bench.deploy_sizes)
    cff = compression_for_free(pts, bench.seeds)
    dom = dominates_direct(pts)
    return {**res, "points": pts, "front": pareto_front(pts), "compression_for_free": cff, "dominates_direct": dom,
            "goals": goals(cff, dom), "goal_speedup": GOAL_SPEEDUP}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".pareto")
    ap.add_argument("--results", type=Path, help="where pareto.{json,md,png} go (default: benchmarks/results; "
                    "smoke: <work>/smoke/results)")
    ap.add_argument("--ledger", type=Path, help="record of finished runs (default: benchmarks/ledger/pareto/<preset> "
                    "for cpu, none for smoke)")
    ap.add_argument("--no-ledger", action="store_true")
    args = ap.parse_args(argv)

    import readme_tables

    from compressdet._io import atomic_write_json, atomic_write_text
    from compressdet.data import build_dataset, prepare_data
    from compressdet.recipe import DataConfig

    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.results or (RESULTS if args.preset != "smoke" else work / "results")
    igp = copy.deepcopy(ig.PRESETS[PRESETS[args.preset]["ig"]])
    cfg = DataConfig(**ig._data(igp, True))
    prepare_data(cfg)
    n_train = len(build_dataset(cfg, "train", train=True))
    bench = declare(args.preset, n_train, ig.data_hash_of(cfg))
    ledger = ig.bench_ledger("pareto", args)
    with ig.teacher_feature_cache(work / "feature_cache", n_train, enabled=igp["feature_cache"]):
        res = Runner(bench, work, ledger).run_all()
    r = report(res, bench)
    r["command"] = f"python benchmarks/pareto.py --preset {args.preset}"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "pareto.json", r)
    plot_accuracy_latency(r["points"], r["front"], out_dir / "pareto.png",
                          title=f"Pareto ({args.preset}): test mAP40 vs deployed latency at "
                                f"{bench.deploy_sizes[0][0]}x{bench.deploy_sizes[0][1]}")
    md = f"# The chain against what a user gets without it ({args.preset} preset)\n\n" + readme_tables.pareto(r)
    atomic_write_text(out_dir / "pareto.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
