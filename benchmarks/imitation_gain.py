"""Does fine-grained feature imitation help the 0.25x student? (METHOD.md section 3)

Runs, through the recipe pipeline: a 1x teacher (trained once, cached by recipe+data hash), then
0.25x students without imitation, with imitation, and with imitation from an untrained random
frozen 1x (control), for >= 3 paired seeds (same init and batch order per seed, only the
imitation differs), plus a weight sweep on seed 0. Writes benchmarks/results/imitation_gain.{json,md}.

    python benchmarks/imitation_gain.py --preset smoke   # < 3 min on CPU, checks the plumbing only
    python benchmarks/imitation_gain.py --preset full    # the real experiment (~2.5 h on one GPU)
    python benchmarks/imitation_gain.py --preset smoke --input-overhead-only   # ~1 min on CPU

``input_overhead``: how much slower a real training step (data loader: decode, augmentation,
collate) is than the same step fed a fixed random batch of the same shape, measured by
:func:`measure_input_overhead` (imitation on, steps interleaved so drift hits both sides alike).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PRESETS = {
    "smoke": {"data": {"format": "synth", "image_size": [64, 192], "synth": {"num_images": 16, "size": [384, 128]},
                       "max_val_images": 4},
              "teacher_steps": 4, "student_steps": 3, "batch": 2, "seeds": [0, 1, 2], "sweep": [0.25, 0.5, 1.0],
              "device": "cpu", "threads": 1},
    "full": {"data": {"format": "kitti", "root": str(ROOT.parent / "shared" / "kitti_real"),
                      "image_size": [384, 1248]},
             "teacher_steps": 40000, "student_steps": 40000, "batch": 32, "seeds": [0, 1, 2],
             "sweep": [0.25, 0.5, 1.0], "device": "auto", "threads": None},
}


def _stage(name, arch, steps, p, **extra):
    sched = {"steps": steps, "batch_size": p["batch"], "eval_every": max(steps // 8, 1) if steps > 8 else steps,
             "checkpoint_every": max(steps // 8, 1) if steps > 8 else steps, "log_every": min(20, steps)}
    if p["threads"]:
        sched["threads"] = p["threads"]
    return {"name": name, "kind": "train", "model": {"arch": arch}, "schedule": sched, **extra}


def _run(recipe: dict, work: Path) -> dict:
    """Run a recipe dict with the CLI; returns the manifest."""
    from compressdet.cli import main

    path = work / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = work / "runs" / recipe["name"]
    args = ["run", str(path), "--run-dir", str(run_dir)]
    if (run_dir / "manifest.json").exists():
        args.append("--resume")
    rc = main(args)
    if rc != 0:
        raise SystemExit(f"recipe {recipe['name']} failed (exit {rc})")
    return json.loads((run_dir / "manifest.json").read_text())


def measure_input_overhead(p: dict, *, steps: int = 8, chunk: int = 2, warmup: int = 2, seed: int = 0) -> dict:
    """Fraction by which a real training step exceeds one on random tensors of the same shape.

    One Trainer (0.25x student, imitation from a random 1x teacher, the preset's data, batch and
    threads); its step reads either the real loader or a fixed random batch (same image shape,
    the real batch's targets), alternating every ``chunk`` steps after ``warmup`` steps of each.
    Everything but the input (forward, loss, imitation, backward, optimizer) is the same code.

    Returns:
        ``{"input_overhead": (t_real - t_random) / t_random, "real_s_per_step", "random_s_per_step",
        "steps"}`` (median seconds per step of each kind).
    """
    import itertools
    import tempfile

    import torch

    from compressdet.data import build_dataset, build_loader
    from compressdet.engine import Trainer
    from compressdet.losses import SqueezeDetLoss
    from compressdet.models import build_model
    from compressdet.recipe import DataConfig, ImitationConfig, ScheduleConfig

    if p["threads"]:
        torch.set_num_threads(p["threads"])
    device = "cuda" if p["device"] == "auto" and torch.cuda.is_available() else "cpu"
    data_cfg = DataConfig(**p["data"])
    hw = tuple(data_cfg.image_size)
    loader = build_loader(build_dataset(data_cfg, "train", train=True, seed=seed), batch_size=p["batch"],
                          train=True, seed=seed, num_workers=data_cfg.num_workers)
    torch.manual_seed(seed)
    student = build_model("shuffledet_0.25x", image_size=hw)
    teacher = build_model("shuffledet_1x", image_size=hw).eval()
    sched = ScheduleConfig(steps=10 ** 9, batch_size=p["batch"], log_every=10 ** 9, eval_every=10 ** 9,
                           checkpoint_every=10 ** 9)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(student, schedule=sched, loss_fn=SqueezeDetLoss(student.anchors(), image_size=hw),
                     train_loader=loader, teacher=teacher, imitation=ImitationConfig(weight=1.0), out_dir=tmp,
                     device=device, seed=seed)
        real_iter = iter(loader)
        images, targets = next(real_iter)
        fixed = itertools.repeat((torch.randn_like(images) * 50, targets))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def timed(it, n: int) -> list[float]:
            tr._data_iter = it
            out = []
            for _ in range(n):
                sync()
                t0 = time.perf_counter()
                tr.run_step()
                sync()
                out.append(time.perf_counter() - t0)
                tr.iter += 1
            return out

        timed(real_iter, warmup), timed(fixed, warmup)
        real, rand = [], []
        for _ in range(max(steps // chunk, 1)):
            real += timed(real_iter, chunk)
            rand += timed(fixed, chunk)
    t_real, t_rand = statistics.median(real), statistics.median(rand)
    return {"input_overhead": (t_real - t_rand) / t_rand, "real_s_per_step": t_real, "random_s_per_step": t_rand,
            "steps": len(real)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".imitation_gain")
    ap.add_argument("--input-overhead-only", action="store_true",
                    help="only measure input_overhead (updates it in an existing results JSON)")
    ap.add_argument("--overhead-steps", type=int, default=8, help="timed steps of each kind")
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    if args.input_overhead_only:
        ov = measure_input_overhead(p, steps=args.overhead_steps)
        out = RESULTS / "imitation_gain.json"
        if out.is_file():
            old = json.loads(out.read_text())
            old.update(input_overhead=ov["input_overhead"], input_overhead_detail={**ov, "preset": args.preset})
            out.write_text(json.dumps(old, indent=2) + "\n")
        print(json.dumps(ov, indent=2))
        return 0
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base = {"seed": 0, "device": p["device"], "data": p["data"]}

    # 1. teacher, cached by a hash of its recipe (data settings included)
    teacher_recipe = {**base, "stages": [_stage("teacher", "shuffledet_1x", p["teacher_steps"], p)]}
    key = hashlib.sha256(json.dumps(teacher_recipe, sort_keys=True).encode()).hexdigest()[:12]
    teacher_recipe["name"] = f"teacher-{key}"
    t0 = time.perf_counter()
    tman = _run(teacher_recipe, work)
    teacher_minutes = (time.perf_counter() - t0) / 60
    trec = tman["stages"]["teacher"]
    teacher_model = str((work / "runs" / teacher_recipe["name"] / trec["artifacts"]["model"]["path"]).resolve())

    # the teacher enters each student recipe as an already-finished stage would: a `from`-less train
    # stage cannot take a file, so each student run re-uses the cached teacher via a tiny 'load' recipe
    def student(name, seed, weight, random_teacher=False):
        stages = []
        tstage = _stage("teacher", "shuffledet_1x", 1 if random_teacher else p["teacher_steps"], p)
        if random_teacher:  # untrained: lr ~0 for one step keeps the random init
            tstage["schedule"].update(lr=1e-12, steps=1, eval_every=1, checkpoint_every=1, log_every=1)
        stages.append(tstage)
        st = _stage("student", "shuffledet_0.25x", p["student_steps"], p)
        if weight > 0:
            st.update(teacher="teacher", imitation={"weight": weight})
        stages.append(st)
        return {**base, "seed": seed, "name": name, "stages": stages}

    rows: dict[str, list] = {"0.25x": [], "0.25x-I": [], "0.25x-I-random": []}
    img_s = []
    t0 = time.perf_counter()
    for seed in p["seeds"]:
        for label, weight, rnd in (("0.25x", 0.0, False), ("0.25x-I", 1.0, False), ("0.25x-I-random", 1.0, True)):
            r = student(f"{label}-s{seed}-{key}", seed, weight, rnd)
            if not rnd:  # seed the run dir with the cached teacher so it is not retrained
                _seed_teacher(work, r, tman, teacher_recipe["name"])
            man = _run(r, work)
            m = man["stages"]["student"]["metrics"]
            rows[label].append(m["map40"])
            if m.get("train_img_per_s"):
                img_s.append(m["train_img_per_s"])
    sweep = {}
    for w in p["sweep"]:
        r = student(f"sweep-w{w}-{key}", p["seeds"][0], w)
        _seed_teacher(work, r, tman, teacher_recipe["name"])
        sweep[str(w)] = _run(r, work)["stages"]["student"]["metrics"]["map40"]
    minutes = (time.perf_counter() - t0) / 60

    gains = [a - b for a, b in zip(rows["0.25x-I"], rows["0.25x"])]
    ctrl = [a - b for a, b in zip(rows["0.25x-I-random"], rows["0.25x"])]
    teacher_map = trec["metrics"]["map40"]
    result = {
        "preset": args.preset,
        "map40": {"1x": teacher_map, **rows},
        "teacher_gap": teacher_map - statistics.mean(rows["0.25x"]),
        "gain_mean": statistics.mean(gains), "gain_sd": statistics.stdev(gains) if len(gains) > 1 else 0.0,
        "control_gain_mean": statistics.mean(ctrl),
        "weight_sweep_seed0": sweep,
        "minutes": minutes, "teacher_minutes": teacher_minutes,
        "train_img_per_s": statistics.mean(img_s) if img_s else None,
        "input_overhead": None,  # filled below
        "total_minutes": (time.perf_counter() - t_start) / 60,
    }
    ov = measure_input_overhead(p, steps=args.overhead_steps)
    result["input_overhead"], result["input_overhead_detail"] = ov["input_overhead"], {**ov, "preset": args.preset}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "imitation_gain.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["| model | mAP40 (mean over seeds) | per seed |", "|---|---|---|",
          f"| 1x | {teacher_map:.2f} | |"]
    for k, v in rows.items():
        md.append(f"| {k} | {statistics.mean(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    md.append("")
    md.append(f"gain (I - baseline): {result['gain_mean']:.2f} +- {result['gain_sd']:.2f}; "
              f"control (random teacher): {result['control_gain_mean']:.2f}; sweep: {sweep}")
    (RESULTS / "imitation_gain.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps(result, indent=2))
    return 0


def _seed_teacher(work: Path, recipe: dict, tman: dict, teacher_run: str) -> None:
    """Copy the cached teacher stage (artifact + manifest record) into the student's run directory,
    so ``--resume`` verifies and skips it instead of training it again."""
    import shutil

    from compressdet.pipeline import stage_fingerprint
    from compressdet.recipe import parse_recipe

    run_dir = work / "runs" / recipe["name"]
    if (run_dir / "manifest.json").exists():
        return
    src = work / "runs" / teacher_run
    rec = dict(tman["stages"]["teacher"])
    parsed = parse_recipe(yaml.safe_dump(recipe, sort_keys=False), check_paths=False)
    rec["fingerprint"] = stage_fingerprint(parsed, parsed.stage("teacher"), {})
    for art in rec["artifacts"].values():
        dst = run_dir / art["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / art["path"], dst)
    manifest = {k: v for k, v in tman.items() if k != "stages"}
    manifest.update(recipe=recipe["name"], run_id=run_dir.name, stages={"teacher": rec})
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    sys.exit(main())
