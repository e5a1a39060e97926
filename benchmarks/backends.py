"""ONNX Runtime vs OpenVINO on this CPU: fp32 (exact and OpenVINO's default precision) and INT8, per
ShuffleDet width, each model on each backend timed in processes of its own.

What a user deploying on an x86 CPU wants to know: which runtime, and what INT8 buys against the
best float option, not against a handicapped one. Per width (0.25x / 0.5x / 1x) at 384x1248:

- ``ort``: the fastest exact fp32 ONNX graph the exporter makes (fp32 rewrites on), ORT_ENABLE_ALL;
- ``openvino-f32``: the same graph as OpenVINO IR with ``INFERENCE_PRECISION_HINT=f32`` (exact);
- ``openvino``: the same IR at OpenVINO's default precision (bf16 on CPUs with AVX512-BF16: not exact);
- ``ort-int8`` / ``openvino-int8``: the exporter's QDQ INT8 graph (PT2E, the QAT stage's quantizer;
  latency depends on the graph, not on the calibration) on each runtime.

Weights: the imitation benchmark's trained models where its ledger holds them (1x teacher, 0.25x
student), else random (BN statistics randomised); convolution latency does not depend on the
values, the output-difference column does. Each backend's output is compared with PyTorch fp32 on
one real SynthKITTI image (max |diff| over the raw head, and relative to the head's range).

    python benchmarks/backends.py                   # -> benchmarks/results/backends.{json,md}
    python benchmarks/backends.py --size 192 624    # the benchmarks' run size
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results"
ARCH = {"0.25": "shuffledet_0.25x", "0.5": "shuffledet_0.5x", "1": "shuffledet_1x"}
EXACT_FP32 = ("ort", "openvino-f32")
INT8 = ("ort-int8", "openvino-int8")


def trained_file(width: str) -> tuple[Path | None, str]:
    """The imitation benchmark's trained model of this width (ledger), or ``(None, "random")``."""
    from _ledger import Ledger

    ledger = Ledger.for_bench("imitation_gain", "cpu")
    pattern = {"1": "teacher-*", "0.25": "I-lr*-w1.0-s0-*"}.get(width)
    if pattern is None:
        return None, "random"
    names = sorted(n for n in ledger.entries() if Path(n).match(pattern))
    if not names:
        return None, "random"
    return ledger.kept_file(names[0], "teacher" if width == "1" else "student")[0], f"trained ({names[0]})"


def model_for(width: str, hw: tuple[int, int]):
    """The width's model at input ``hw`` (trained weights loaded into a model built for ``hw``)."""
    from quant import _random_student

    from compressdet.models import build_model, load_model

    path, source = trained_file(width)
    if path is None:
        return _random_student(width, *hw), source
    trained, _ = load_model(path)
    model = build_model(ARCH[width], image_size=hw)
    model.load_state_dict(trained.state_dict())
    return model.eval(), source


def real_image(hw: tuple[int, int]):
    """One SynthKITTI image at ``hw`` (the imitation benchmark's data, its first test image)."""
    import imitation_gain as ig

    from compressdet.data import build_dataset
    from compressdet.recipe import DataConfig

    data = ig._data(ig.PRESETS["cpu"], True) | {"image_size": list(hw), "cache": False}
    ds = build_dataset(DataConfig(**data), "test", train=False)
    return ds[0][0].unsqueeze(0)


def build_graphs(width: str, hw: tuple[int, int], folder: Path) -> dict:
    """fp32 ONNX (fast exact), QDQ INT8 ONNX, and their OpenVINO IRs; cached by name."""
    import torch
    from _protocol import export_fast_fp32
    from quant import _pt2e_int8, _random_inputs

    from compressdet.export._openvino import convert_to_ir

    model, source = model_for(width, hw)
    tag = f"{width}x-{hw[0]}x{hw[1]}-{source.split(' ')[0]}"
    g = {"fp32": folder / f"{tag}.fp32.onnx", "int8": folder / f"{tag}.int8.onnx"}
    folder.mkdir(parents=True, exist_ok=True)
    rewrites = None
    if not g["fp32"].is_file():
        rewrites = export_fast_fp32(model, g["fp32"], hw)["fp32_rewrites"]
    if not g["int8"].is_file():
        _, calib = _random_inputs(*hw)
        _pt2e_int8(model, torch.from_numpy(calib[0]), calib, g["int8"], fold=True, pad=4)
    for k in ("fp32", "int8"):
        xml = g[k].with_suffix(".xml")
        if not xml.is_file():
            convert_to_ir(g[k], xml)
        g[f"{k}_ir"] = xml
    return {"graphs": g, "source": source, "model": model, "fp32_rewrites": rewrites}


def output_diffs(model, graphs: dict, x, threads: int) -> dict:
    """Max |backend - PyTorch fp32| over the raw head on ``x``, absolute and relative to its range."""
    import numpy as np
    import torch

    from compressdet.bench.backends import open_backend

    with torch.no_grad():
        ref = model(x).numpy()
    span = float(ref.max() - ref.min()) or 1.0
    files = {"ort": graphs["fp32"], "openvino-f32": graphs["fp32_ir"], "openvino": graphs["fp32_ir"],
             "ort-int8": graphs["int8"], "openvino-int8": graphs["int8_ir"]}
    out = {}
    for backend, f in files.items():
        b = open_backend(backend, f, threads=threads)
        y = np.asarray(b.fn(x.numpy()))
        d = float(np.abs(y - ref).max())
        out[backend] = {"precision": b.precision, "max_abs_diff": d, "rel_to_range": d / span, "info": b.info}
    return out


def main(argv: list[str] | None = None) -> int:
    from compressdet._io import atomic_write_json, atomic_write_text
    from compressdet.bench.latency import TimingJob, time_isolated
    from compressdet.export._openvino import check_openvino
    from compressdet.pipeline import cpu_platform

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", nargs="+", default=["0.25", "0.5", "1"], choices=list(ARCH))
    ap.add_argument("--size", type=int, nargs=2, default=[384, 1248], metavar=("H", "W"))
    ap.add_argument("--runs", type=int, default=60, help="timed runs per model and backend (median)")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per model and backend, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".backends", help="graphs (cached)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    check_openvino("the backends benchmark")
    import torch

    torch.set_num_threads(args.threads)
    hw = tuple(args.size)
    t0 = time.perf_counter()
    x = real_image(hw)
    built = {w: build_graphs(w, hw, args.work) for w in args.widths}
    diffs = {w: output_diffs(b["model"], b["graphs"], x, args.threads) for w, b in built.items()}
    files = {"ort": "fp32", "openvino-f32": "fp32_ir", "openvino": "fp32_ir", "ort-int8": "int8",
             "openvino-int8": "int8_ir"}
    jobs = {f"{w}|{be}": TimingJob(be, str(b["graphs"][k]), (1,), hw)
            for w, b in built.items() for be, k in files.items()}
    timed = time_isolated(jobs, runs=args.runs, rounds=args.rounds, threads=args.threads)
    rows = {}
    for w in args.widths:
        ms = {be: timed[f"{w}|{be}"]["b1"]["median_ms"] for be in files}
        best_fp32 = min(EXACT_FP32, key=ms.get)
        best_int8 = min(INT8, key=ms.get)
        rows[w] = {
            "model": ARCH[w], "weights": built[w]["source"], "median_ms": ms,
            "p90_ms": {be: timed[f"{w}|{be}"]["b1"]["p90_ms"] for be in files},
            "precision": {be: timed[f"{w}|{be}"]["precision"] for be in files},
            "output_diff_vs_torch_fp32": diffs[w],
            "best_exact_fp32": {"backend": best_fp32, "ms": ms[best_fp32]},
            "best_int8": {"backend": best_int8, "ms": ms[best_int8]},
            "int8_speedup_vs_best_exact_fp32": ms[best_fp32] / ms[best_int8],
            "int8_speedup_vs_openvino_default": ms["openvino"] / ms[best_int8],
            "openvino_default_vs_ort_fp32": ms["ort"] / ms["openvino"],
            "graphs": {k: str(Path(v).relative_to(ROOT)) if Path(v).is_relative_to(ROOT) else str(v)
                       for k, v in built[w]["graphs"].items()},
        }
    student = rows.get("0.25")
    res = {
        "command": "python benchmarks/backends.py" + ("" if list(hw) == [384, 1248] else f" --size {hw[0]} {hw[1]}"),
        "size": list(hw), "batch": 1, "threads": args.threads, "runs": args.runs, "rounds": args.rounds,
        "machine": cpu_platform(),
        "protocol": "each (model, backend) timed in fresh processes of its own, alternating over rounds "
                    "(compressdet.bench.latency.time_isolated); median ms at batch 1",
        "versions": _versions(), "rows": rows,
        "goals": None if student is None else {
            "int8_student_2x_vs_best_exact_fp32": student["int8_speedup_vs_best_exact_fp32"] >= 2.0,
            "int8_student_faster_than_openvino_default_fp32": student["int8_speedup_vs_openvino_default"] > 1.0},
        "minutes": (time.perf_counter() - t0) / 60,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "" if list(hw) == [384, 1248] else f"_{hw[0]}x{hw[1]}"
    atomic_write_json(args.results / f"backends{suffix}.json", res)
    atomic_write_text(args.results / f"backends{suffix}.md", report(res))
    print(report(res))
    return 0


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("onnxruntime", "openvino", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def report(res: dict) -> str:
    be = ("ort", "openvino-f32", "openvino", "ort-int8", "openvino-int8")
    lines = [f"# ONNX Runtime vs OpenVINO ({res['size'][0]}x{res['size'][1]}, batch 1, {res['threads']} threads)", "",
             f"`{res['command']}` — {res['protocol']}; {res['machine']}; "
             + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), "",
             "| model | weights | " + " | ".join(f"{b} ms" for b in be) + " | best exact fp32 | best int8 | "
             "int8 vs best exact fp32 | int8 vs OpenVINO default |", "|---|---|" + "---|" * (len(be) + 4)]
    for r in res["rows"].values():
        cells = [f"{r['median_ms'][b]:.1f} ({r['precision'][b]})" for b in be]
        lines.append(f"| {r['model']} | {r['weights'].split(' ')[0]} | " + " | ".join(cells)
                     + f" | {r['best_exact_fp32']['backend']} | {r['best_int8']['backend']} | "
                     f"{r['int8_speedup_vs_best_exact_fp32']:.2f}x | {r['int8_speedup_vs_openvino_default']:.2f}x |")
    lines += ["", "Output difference from PyTorch fp32 (max |diff| over the raw head on one SynthKITTI test image, "
              "relative to the head's range):", "",
              "| model | " + " | ".join(be) + " |", "|---|" + "---|" * len(be)]
    for r in res["rows"].values():
        d = r["output_diff_vs_torch_fp32"]
        lines.append(f"| {r['model']} | " + " | ".join(f"{d[b]['max_abs_diff']:.3g} ({d[b]['rel_to_range']:.1%})"
                                                       for b in be) + " |")
    if res.get("goals"):
        lines += ["", f"Goals (0.25x student): {res['goals']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
