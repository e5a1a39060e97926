"""Prune benchmark: the 0.5x imitation student pruned to <= 60% of its MACs, fine-tuned with and
without imitation, on SynthKITTI; mAP drop and ONNX Runtime fp32 speed-up.

Targets (issue 7): map_drop <= 1.0 (with imitation), ort_speedup >= 1.3, macs_ratio <= 0.6.

    .venv/bin/python benchmarks/prune.py --preset smoke   # < 3 min on CPU, checks the plumbing only
    .venv/bin/python benchmarks/prune.py --preset full    # the real measurement (GPU recommended)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "smoke": dict(size=[64, 192], images=24, teacher=4, student=4, prune=4, batch=4, val=4, runs=10),
    "full": dict(size=[384, 1248], images=2000, teacher=8000, student=8000, prune=2000, batch=16, val=500, runs=50),
}


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


def _ort_latency_ms(model: torch.nn.Module, hw: list[int], runs: int) -> float:
    import onnxruntime as ort

    x = torch.zeros(1, 3, *hw)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "m.onnx"
        torch.onnx.export(model.eval(), (x,), str(f), input_names=["images"], opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
        feed = {"images": x.numpy()}
        for _ in range(3):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    torch.set_num_threads(1)
    from compressdet.models import load_model, model_summary
    from compressdet.pipeline import run_recipe
    from compressdet.recipe import parse_recipe

    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        run_dir = run_recipe(parse_recipe(_recipe(p), source=f"benchmarks/prune.py:{args.preset}"), run_dir=Path(d) / "run")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        stages = manifest["stages"]
        stages = stages if isinstance(stages, dict) else {s["name"]: s for s in stages}
        rows = {}
        for name in ("student", "pruned", "pruned_noimit"):
            model, _ = load_model(next(run_dir.rglob(f"{name}/model.pt")))
            s = model_summary(model, tuple(p["size"]))
            rows[name] = {"map40": stages[name]["metrics"].get("map40"), "macs": s["macs"]["backbone"],
                          "params": s["params"]["total"], "ort_ms": _ort_latency_ms(model, p["size"], p["runs"])}
    st, pr, pn = rows["student"], rows["pruned"], rows["pruned_noimit"]
    res = {"preset": args.preset, "image_size": p["size"], "macs_ratio": pr["macs"] / st["macs"],
           "map_drop": (st["map40"] or 0) - (pr["map40"] or 0),
           "map_drop_without_imitation": (st["map40"] or 0) - (pn["map40"] or 0),
           "ort_speedup": st["ort_ms"] / pr["ort_ms"], "rows": rows, "minutes": (time.time() - t0) / 60,
           "targets": {"macs_ratio": "<= 0.6", "map_drop": "<= 1.0", "ort_speedup": ">= 1.3"}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from compressdet._io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "prune.json", res)
    lines = [f"# Prune benchmark ({args.preset}, {p['size'][0]}x{p['size'][1]}, ORT fp32 1 thread)", "",
             "| model | backbone MACs | params | ORT ms | mAP40 |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        m = "-" if r["map40"] is None else f"{r['map40']:.1f}"
        lines.append(f"| {name} | {r['macs'] / 1e6:.1f} M | {r['params'] / 1e6:.3f} M | {r['ort_ms']:.2f} | {m} |")
    lines += ["", f"macs_ratio {res['macs_ratio']:.3f}, map_drop {res['map_drop']:.2f}, "
              f"map_drop_without_imitation {res['map_drop_without_imitation']:.2f}, ort_speedup {res['ort_speedup']:.2f}x"]
    atomic_write_text(out / "prune.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
