"""Which INT8 placement to ship by default (issue #40), and what 7-bit activations cost.

The shipped 0.25x-I ShuffleDet student (``asset:shuffledet_0.25x_imitated_synthkitti``, 192x624) through
four ``ptq`` stages of one recipe: ``quant.quantizer`` x86 (compressdet's placement for ONNX Runtime) or
openvino (NNCF's placement for OpenVINO's CPU plugin), each with ``quant.reduce_range`` false and true.
Per stage: mAP40 on a small SynthKITTI val set of the PyTorch int8 program, of ONNX Runtime and of
OpenVINO on the stage's QDQ graph (the same evaluator as the stages), and the OpenVINO INT8 latency of
the graph at 192x624, batch 1, each graph in fresh processes of its own, alternating over rounds
(``compressdet.bench.latency.time_isolated``), median. The CPU is shared with other work: the latencies
are labelled "indicative, shared CPU".

    python benchmarks/quant_placement.py --preset smoke     # the plumbing: a few images, few runs
    python benchmarks/quant_placement.py --preset cpu       # -> benchmarks/results/quant_placement.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ASSET = "asset:shuffledet_0.25x_imitated_synthkitti"

PRESETS = {
    "smoke": {"size": [192, 624], "num_images": 10, "max_val": 2, "calib": 2, "runs": 4, "rounds": 2, "threads": 1},
    "cpu": {"size": [192, 624], "num_images": 150, "max_val": 30, "calib": 32, "runs": 60, "rounds": 4, "threads": 2},
}
ARMS = {"x86": ("x86", False), "x86_reduce_range": ("x86", True), "openvino": ("openvino", False),
        "openvino_reduce_range": ("openvino", True)}


def recipe(p: dict, cache: Path) -> str:
    """One run: the shipped student, then one ptq stage per arm (calibrated on the same first images)."""
    stages = [f"  - {{name: student, kind: model_file, path: '{ASSET}'}}"]
    for name, (quantizer, rr) in ARMS.items():
        stages.append(f"  - {{name: {name}, kind: ptq, from: student, quant: {{quantizer: {quantizer}, "
                      f"reduce_range: {str(rr).lower()}, calibration_images: {p['calib']}}}, eval: {{batch_size: 4}}}}")
    h, w = p["size"]
    return "\n".join([
        "name: quant_placement", "seed: 0", "data:", "  format: synth", f"  image_size: [{h}, {w}]",
        f"  synth: {{num_images: {p['num_images']}, seed: 0, cache_dir: '{cache}'}}",
        "  augment: {enabled: false}", f"  max_val_images: {p['max_val']}", "stages:", *stages, ""])


def openvino_map(onnx_path: Path, run_recipe, stage_cfg, model) -> float:
    """mAP40 of the QDQ graph in OpenVINO (the stages evaluate it there only for the openvino placement)."""
    from compressdet.quant._eval import evaluate_head_fn, openvino_head_fn

    res = evaluate_head_fn(openvino_head_fn(onnx_path), run_recipe.data, post_cfg=stage_cfg.postprocess,
                           eval_cfg=stage_cfg.eval, model=model)
    return float(res["primary"])


def agreement(pt2: Path, onnx_path: Path, images) -> dict[str, float]:
    """Mean |runtime - PyTorch int8| over mean |PyTorch int8| of the raw head on ``images``, in OpenVINO and
    ONNX Runtime INT8: where the CPU's u8s8 kernels saturate, 8-bit activations show here first."""
    import numpy as np
    import onnxruntime as ort
    import openvino as ov
    import torch

    from compressdet.export.quantized import load_quantized_program

    prog = load_quantized_program(pt2)
    ov_model = ov.Core().compile_model(str(onnx_path), "CPU")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    d = {"openvino": [], "ort": []}
    ref_mag = []
    for x in images:
        with torch.no_grad():
            ref = prog(x).numpy()
        ref_mag.append(np.abs(ref).mean())
        d["openvino"].append(np.abs(ov_model(x.numpy())[0] - ref).mean())
        d["ort"].append(np.abs(sess.run(None, {"images": x.numpy()})[0] - ref).mean())
    return {k: round(float(np.mean(v) / np.mean(ref_mag)), 4) for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=None, help="run folder (default: a temporary one); its finished stages are kept")
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    sys.path.insert(0, str(ROOT))
    from compressdet._cpu import int8_dot_product
    from compressdet._io import atomic_write_json
    from compressdet.bench.latency import TimingJob, time_isolated
    from compressdet.models import load_model
    from compressdet.pipeline import Pipeline
    from compressdet.recipe import parse_recipe

    work = args.work or Path(tempfile.mkdtemp(prefix="quant_placement_"))
    rec = parse_recipe(recipe(p, work / "synth"), source="quant_placement.yaml")
    t0 = time.time()
    # a finished stage of an earlier invocation in --work is kept (resume), not re-run
    run = Pipeline(rec, work / "run", resume=(work / "run" / "manifest.json").is_file()).run()
    man = json.loads((run / "manifest.json").read_text())
    student, _ = load_model(run / man["stages"]["student"]["artifacts"]["model"]["path"])
    cfgs = {s.name: s for s in rec.stages}
    from compressdet.data import build_dataset

    val = build_dataset(rec.data, "val", train=False)
    images = [val[i][0].unsqueeze(0) for i in range(min(8, len(val)))]
    arms: dict[str, dict] = {}
    for name in ARMS:
        st = man["stages"][name]
        if st["status"] != "done":
            raise SystemExit(f"stage {name}: {st.get('error')}")
        m, onnx_path = st["metrics"], run / st["artifacts"]["onnx_int8"]["path"]
        arms[name] = {"quantizer": m["quantizer"], "reduce_range": m["reduce_range"],
                      "map40_torch_int8": round(m["map40"], 3), "map40_ort_int8": round(m["ort_map40"], 3),
                      "map40_openvino_int8": round(openvino_map(onnx_path, rec, cfgs[name], student), 3),
                      "graph": m["graph"], "onnx": str(onnx_path),
                      "head_mean_rel_diff_vs_torch_int8": agreement(run / st["artifacts"]["quantized"]["path"],
                                                                    onnx_path, images)}
    h, w = p["size"]
    timed = time_isolated({n: TimingJob("openvino-int8", a["onnx"], (1,), (h, w)) for n, a in arms.items()},
                          runs=p["runs"], rounds=p["rounds"], threads=p["threads"], warmup=5)
    for n, a in arms.items():
        cell = timed[n]["b1"]
        a["openvino_int8_latency"] = {k: cell.get(k) for k in ("median_ms", "p90_ms", "min_ms", "runs", "rounds")}
        a["openvino_precision"] = timed[n]["precision"]
        a.pop("onnx")
    med = {n: a["openvino_int8_latency"]["median_ms"] for n, a in arms.items()}
    # the comparison at the setting each CPU gets by default (reduce_range auto)
    auto = not int8_dot_product()
    x86, ov = ("x86_reduce_range", "openvino_reduce_range") if auto else ("x86", "openvino")
    ratio = med[x86] / med[ov]
    out = {
        "what": "PTQ of the shipped 0.25x-I ShuffleDet student: x86 vs openvino INT8 placement, each with 8-bit "
                "and 7-bit (reduce_range) activations; mAP40 on SynthKITTI val, latency in OpenVINO INT8",
        "preset": args.preset, "model": ASSET, "image_size": [h, w], "val_images": p["max_val"],
        "agreement_images": "the first 8 val images",
        "calibration_images": p["calib"], "latency_protocol": (
            f"OpenVINO INT8 of the stage's QDQ ONNX, batch 1, {p['threads']} threads, each graph in fresh "
            f"processes of its own, {p['rounds']} alternating rounds, {p['runs']} runs in all, median"),
        "latency_label": "indicative, shared CPU",
        "cpu_int8_dot_product": not auto, "reduce_range_auto_here": auto,
        "arms": arms,
        "x86_over_openvino_latency_at_auto": round(ratio, 3),
        "reduce_range_map40_cost": {q: round(arms[q]["map40_torch_int8"] - arms[f"{q}_reduce_range"]["map40_torch_int8"], 3)
                                    for q in ("x86", "openvino")},
        "reduce_range_map40_cost_openvino_runtime": {
            q: round(arms[q]["map40_openvino_int8"] - arms[f"{q}_reduce_range"]["map40_openvino_int8"], 3)
            for q in ("x86", "openvino")},
        "default_kept": "x86" if ratio < 1.15 else "openvino would be faster: consider it",
        "seconds": round(time.time() - t0, 1),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "quant_placement.json", out)
    for n, a in arms.items():
        print(f"{n:24s} mAP40 torch {a['map40_torch_int8']:6.2f} ort {a['map40_ort_int8']:6.2f} "
              f"openvino {a['map40_openvino_int8']:6.2f}  OV INT8 median {a['openvino_int8_latency']['median_ms']:.2f} ms "
              f"({a['openvino_precision']}), head vs torch int8: {a['head_mean_rel_diff_vs_torch_int8']}")
    print(f"x86 / openvino latency at the auto setting: {ratio:.2f} (indicative, shared CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
