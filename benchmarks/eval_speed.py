"""Speed of the vectorised KITTI evaluator against the pure-python reference loop.

Ground truth: KITTI val (3,769 images of ../shared/kitti_real, about 24k label lines with
DontCare); detections synthesised from it: every Car/Pedestrian/Cyclist/Van GT jittered (kept with
p=0.85) plus random false positives, about 24k lines. Times the in-process call
``evaluate_kitti(gt, dets)`` (best of --repeat) and the reference on the first
--reference-images images (extrapolated linearly to all, it is far too slow to run on all).
Checks that both agree on the subset. Writes benchmarks/results/eval_speed.json.

    .venv/bin/python benchmarks/eval_speed.py [--repeat 5] [--reference-images 200]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from compressdet._io import atomic_write_json
from compressdet.data.kitti import KittiObject, read_label_file, read_split
from compressdet.eval._reference import reference_evaluate_kitti
from compressdet.eval.kitti_eval import evaluate_kitti

ROOT = Path(__file__).resolve().parents[1]
KITTI = ROOT.parent / "shared" / "kitti_real"
TARGET_S = 0.26  # the official C++ devkit's time on this machine (issue 5)


def synth_dets(gt: dict, seed: int = 0) -> dict:
    rng = random.Random(seed)
    dets = {}
    for k, objs in gt.items():
        out = []
        for o in objs:
            if o.type not in ("Car", "Pedestrian", "Cyclist", "Van") or rng.random() > 0.85:
                continue
            x1, y1, x2, y2 = o.bbox
            w, h = x2 - x1, y2 - y1
            j = [rng.gauss(0, 0.08) for _ in range(4)]
            b = (x1 + j[0] * w, y1 + j[1] * h, x2 + j[2] * w, y2 + j[3] * h)
            b = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
            t = "Car" if o.type == "Van" else o.type
            out.append(KittiObject(type=t, bbox=b, score=rng.random() * 0.5 + 0.5, alpha=-10.0))
        for _ in range(rng.randint(0, 4)):
            x, y = rng.uniform(0, 1200), rng.uniform(100, 330)
            w, h = rng.uniform(10, 150), rng.uniform(15, 120)
            out.append(KittiObject(type=rng.choice(("Car", "Pedestrian", "Cyclist")), bbox=(x, y, x + w, y + h),
                                   score=rng.random() * 0.7, alpha=-10.0))
        rng.shuffle(out)
        dets[k] = out
    return dets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reference-images", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_speed.json")
    args = ap.parse_args(argv)
    labels = KITTI / "training" / "label_2_all"
    if not labels.is_dir():
        print(f"KITTI labels not found at {labels}", file=sys.stderr)
        return 2
    ids = read_split(KITTI / "ImageSets" / "val.txt")
    gt = {k: read_label_file(labels / f"{k}.txt") for k in ids}
    dets = synth_dets(gt)
    n_gt = sum(map(len, gt.values()))
    n_det = sum(map(len, dets.values()))

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = evaluate_kitti(gt, dets)
        times.append(time.perf_counter() - t0)
    seed_t0 = time.perf_counter()
    res_seed = evaluate_kitti(gt, dets, protocol="seed")
    seed_s = time.perf_counter() - seed_t0

    sub = ids[: args.reference_images]
    gs, ds = {k: gt[k] for k in sub}, {k: dets[k] for k in sub}
    t0 = time.perf_counter()
    ref = reference_evaluate_kitti(gs, ds)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    vec_sub = evaluate_kitti(gs, ds)
    vec_sub_s = time.perf_counter() - t0
    max_diff = max(abs(ref["ap"][c][lvl][m] - vec_sub["ap"][c][lvl][m])
                   for c in ref["ap"] for lvl in ref["ap"][c] for m in ("ap11", "ap40"))

    row = {
        "images": len(ids), "gt_lines": n_gt, "det_lines": n_det,
        "vectorised_best_s": min(times), "vectorised_median_s": float(np.median(times)), "vectorised_all_s": times,
        "vectorised_seed_protocol_s": seed_s,
        "target_s": TARGET_S, "within_target": min(times) <= TARGET_S,
        "reference_images": len(sub), "reference_s": ref_s, "vectorised_same_subset_s": vec_sub_s,
        "reference_extrapolated_all_s": ref_s * len(ids) / max(len(sub), 1),
        "max_abs_ap_diff_subset": max_diff,
        "map40": res["map40"], "map11": res["map11"], "map11_seed_protocol": res_seed["map11"],
        "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
    }
    print("| evaluator | images | gt/det lines | time (s) |")
    print("|---|---|---|---|")
    print(f"| vectorised (best of {args.repeat}) | {len(ids)} | {n_gt}/{n_det} | {min(times):.3f} "
          f"(median {np.median(times):.3f}, target {TARGET_S}) |")
    print(f"| reference loop | {len(sub)} | | {ref_s:.3f} (x{len(ids) / max(len(sub), 1):.1f} = "
          f"{row['reference_extrapolated_all_s']:.1f} extrapolated) |")
    print(f"| vectorised | {len(sub)} | | {vec_sub_s:.3f} |")
    print(f"max |AP diff| on the subset: {max_diff:.2e}; mAP40 {res['map40']:.2f}, mAP11 {res['map11']:.2f}")
    atomic_write_json(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
