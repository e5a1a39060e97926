"""Which exact float rewrites make the fp32 ONNX graph fastest in ONNX Runtime?

The fp32 side of every speed ratio must be the fastest *exact* fp32 graph the exporter can make
(``compressdet.export.fast_fp32``). This times each rewrite combination on ShuffleDet 0.25x /
0.5x / 1x (random weights: latency of these graphs does not depend on the values) at 384x1248,
batch 1, 2 threads, each graph in a fresh process of its own (``compare_onnx_isolated``, median
of ``--runs`` over alternating rounds), and writes ``benchmarks/results/fp32_rewrites.json``
with every median and the fastest variant per width. The exporter's default
(``DEFAULT_FP32_REWRITES``) is set from this file; ``exact`` records the max |diff| of each
variant's ORT output against the unrewritten model.

    python benchmarks/fp32_rewrites.py                 # ~10 min on 2 cores; nothing else running
    python benchmarks/fp32_rewrites.py --widths 0.25 --runs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

VARIANTS = {
    "none": False,
    "fold": {"fold_shuffle": True, "pad_bottleneck": None, "pool_as_conv": False, "pad_stem": None},
    "fold+pad4": {"fold_shuffle": True, "pad_bottleneck": 4, "pool_as_conv": False, "pad_stem": None},
    "fold+pad16": {"fold_shuffle": True, "pad_bottleneck": 16, "pool_as_conv": False, "pad_stem": None},
    "fold+pad4+pool": {"fold_shuffle": True, "pad_bottleneck": 4, "pool_as_conv": True, "pad_stem": None},
    "fold+pad4+stem4": {"fold_shuffle": True, "pad_bottleneck": 4, "pool_as_conv": False, "pad_stem": 4},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--image-size", type=int, nargs=2, default=[384, 1248])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from compressdet._io import atomic_write_json
    from compressdet.bench.latency import compare_onnx_isolated
    from compressdet.export._onnx import export_onnx, synthetic_image
    from compressdet.export.runtime import ort_run, ort_session
    from compressdet.models import build_model

    hw = tuple(args.image_size)
    out = {"image_size": list(hw), "threads": args.threads, "runs": args.runs, "rounds": args.rounds,
           "timer": "isolated_process", "variants": {k: VARIANTS[k] for k in args.variants}, "widths": {},
           "command": "python benchmarks/fp32_rewrites.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    x = synthetic_image(hw)
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            torch.manual_seed(0)
            model = build_model("shuffledet", width=width, image_size=hw).eval()
            with torch.no_grad():
                ref = model(x).numpy()
            paths, exact = {}, {}
            for name in args.variants:
                p = Path(tmp) / f"{width}-{name}.onnx"
                export_onnx(model, p, image_size=hw, fp32_rewrites=VARIANTS[name], log=lambda *_: None)
                exact[name] = float(np.abs(ort_run(ort_session(p), x.numpy())[0] - ref).max())
                paths[name] = p
            times = compare_onnx_isolated(paths, runs=args.runs, rounds=args.rounds, threads=args.threads)
            base = times["none"]["median_ms"] if "none" in times else None
            best = min(times, key=lambda k: times[k]["median_ms"])
            out["widths"][str(width)] = {
                "median_ms": {k: v["median_ms"] for k, v in times.items()},
                "speedup_vs_none": {k: base / v["median_ms"] for k, v in times.items()} if base else None,
                "max_abs_diff_vs_model": exact, "fastest": best, "detail": times}
            print(f"{width}x: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in times.items()) + f"; fastest {best}")
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "fp32_rewrites.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
