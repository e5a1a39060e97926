"""Does INT8 pay off for the FPN families on a CPU? ORT latency of each family's student, fp32 vs INT8.

For each row (the FPN families on MobileNetV3-small, ``fcos_mnv3_small`` / ``retinanet_mnv3_small``, and
on a MobileNetV2 x0.5 FPN, ``fcos_mnv2_050`` / ``retinanet_mnv2_050``, whose backbone has no float
HardSwish / squeeze-excitation between its int8 convolutions, hence the students ``families.py`` and
``distill_methods.py`` train; ShuffleDet 0.25x for reference) and
each input size (the cpu presets' 192x624 and the seed's 384x1248):

- fp32: the fastest exact fp32 graph the exporter makes (``_protocol.export_fast_fp32``; ShuffleDet's
  exact rewrites, none applies to the FPN families), ORT_ENABLE_ALL;
- int8: the ``ptq`` stage's program (``quant.quantize_ptq``: the PT2E quantizer of the family, float
  decode, FCOS's GroupNorm float) exported as the stage exports it (``export_int8_onnx`` with its ORT
  rewrites and the family's output names);
- each graph timed in a process of its own, graphs alternating over rounds, median of ``--runs``
  (``_protocol.isolated_ms``, cached by the graphs' sha256).

Weights: randomly initialised students with randomised BatchNorm statistics (``randomize_batchnorm``),
calibrated on two random images: latency of these graphs does not depend on the weight values, and
this needs no training run. ``--model ROW=PATH`` (FPN rows) times a trained model file
instead (e.g. a student of ``families.py --preset cpu``; raw outputs do not depend on the input size
the model was trained at); its int8 graph is re-calibrated on random images at each
size, which changes scales, not speed. Accuracy of INT8 is measured elsewhere (``families.py``,
``quant.py accuracy``).

    .venv/bin/python benchmarks/fpn_speed.py                     # ~10 min on 2 quiet cores
    .venv/bin/python benchmarks/fpn_speed.py --preset smoke --results /tmp/x   # plumbing, ~3 min

Writes ``benchmarks/results/fpn_speed.{json,md}`` (``--results`` another folder). Time it alone: another
heavy job on the same cores makes the numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from compressdet._io import atomic_write_json, atomic_write_text  # noqa: E402
from compressdet.pipeline import cpu_platform  # noqa: E402

#: row -> the student timed: the MobileNetV3-small FPN students, ShuffleDet 0.25x, and the MobileNetV2-x0.5
#: FPN variants (families.py's and distill_methods.py's students), whose ReLU6-only backbone runs wholly
#: in int8 (no float HardSwish / squeeze-excitation glue between the int8 convolutions)
STUDENTS = {"fcos": "fcos_mnv3_small", "fcos-mnv2": "fcos_mnv2_050", "retinanet": "retinanet_mnv3_small",
            "retinanet-mnv2": "retinanet_mnv2_050", "shuffledet": "shuffledet_0.25x"}


def family(row: str) -> str:
    return row.split("-")[0]

#: preset -> input sizes, timed runs, rounds, threads (``smoke``: plumbing only, numbers meaningless)
PRESETS = {"full": {"sizes": [(192, 624), (384, 1248)], "runs": 60, "rounds": 3, "threads": 2, "profile_runs": 10},
           "smoke": {"sizes": [(64, 192)], "runs": 4, "rounds": 1, "threads": 1, "profile_runs": 2}}


def _size(text: str) -> tuple[int, int]:
    from compressdet.cli._args import parse_size
    from compressdet.errors import UserError

    try:
        return parse_size(text, "--sizes")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _model_arg(text: str) -> tuple[str, Path]:
    fam, sep, path = text.partition("=")
    if not sep or fam not in STUDENTS or fam == "shuffledet" or not path:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected ROW=PATH with ROW one of "
                                         f"{', '.join(r for r in STUDENTS if r != 'shuffledet')} "
                                         "(ShuffleDet's trained timings: backends.py, quant.py)")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--model {text!r}: no such file {path}")
    return fam, Path(path)


def _model(fam: str, hw: tuple[int, int], path: Path | None) -> tuple[torch.nn.Module, str]:
    from compressdet.models import build_model, load_model
    from compressdet.quant.ptq import randomize_batchnorm

    if path is not None:  # raw outputs do not depend on the size trained at: one model serves every size
        model, _ = load_model(path)
        if getattr(model, "family", "shuffledet") != family(fam):
            raise ValueError(f"--model {fam}={path}: the file holds a {getattr(model, 'family', 'shuffledet')} model")
        return model.eval(), "trained"
    torch.manual_seed(0)
    if fam == "shuffledet":  # quant.py speed's random student (a visible head)
        from quant import _random_student

        return _random_student("0.25", *hw), "random"
    return randomize_batchnorm(build_model(STUDENTS[fam], image_size=hw)).eval(), "random"


def _int8(model: torch.nn.Module, calib: list[torch.Tensor], path: Path) -> Path:
    """The graph a ``ptq`` stage would ship (its quantizer, capture and export passes), so the timing is
    of what users deploy; minmax on ``calib``, as scales do not change speed."""
    from compressdet.quant.onnx_int8 import export_int8_onnx
    from compressdet.quant.ptq import quantize_ptq
    from compressdet.recipe import QuantConfig

    converted = quantize_ptq(model, calib, QuantConfig(calibration_images=len(calib)), observer="minmax",
                             example=calib[0])
    return export_int8_onnx(converted, calib[0], path, output_names=tuple(model.export_outputs))


def kernel_us_per_op(events: list[dict], warmup: int) -> tuple[dict[str, float], int]:
    """Kernel microseconds per op type in ORT profiler ``events``, after the first ``warmup`` runs (a
    kernel event counts when it starts after the end of the last warm-up ``model_run``); also the
    number of timed runs. Kept apart from the profiler so that the filtering is tested."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) <= warmup:
        raise ValueError(f"profile holds {len(runs)} runs, expected more than {warmup} warm-up runs")
    cutoff = runs[warmup - 1]["ts"] + runs[warmup - 1]["dur"] if warmup else float("-inf")
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= cutoff:
            per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0.0) + e["dur"]
    return per_op, len(runs) - warmup


def op_profile(path: Path, runs: int, work: Path, top: int = 8, warmup: int = 2) -> dict:
    """Where the time of one graph goes, to explain a ratio: ORT's profiler (1 thread) summed per op type
    of the optimized graph (``top`` as ``[op, share of kernel time, ms per run]``), and what the
    optimizer made of the graph (op counts; the activations it fused into convolutions). Shares, not
    latency: this runs in-process, not isolated."""
    import collections

    import onnx
    import onnxruntime as ort

    work.mkdir(parents=True, exist_ok=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.enable_profiling, so.profile_file_prefix = True, str(work / "profile")
    so.optimized_model_filepath = str(work / "optimized.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    prof = None
    try:
        inp = sess.get_inputs()[0]
        feed = {inp.name: np.zeros(inp.shape, np.float32)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        prof = Path(sess.end_profiling())
        per_op, n = kernel_us_per_op(json.loads(prof.read_text()), warmup)
        nodes = onnx.load(str(work / "optimized.onnx")).graph.node
    finally:
        for f in (prof, work / "optimized.onnx"):
            if f is not None:
                Path(f).unlink(missing_ok=True)
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    fused = collections.Counter(a.s.decode() for nd in nodes if nd.op_type in ("Conv", "FusedConv")
                                for a in nd.attribute if a.name == "activation")
    return {"runs": n, "threads": 1, "kernel_ms_per_run": round(total / 1000 / n, 3),
            "top": [[op, round(us / total, 4), round(us / 1000 / n, 3)] for op, us in ranked],
            "optimized_ops": dict(collections.Counter(nd.op_type for nd in nodes).most_common()),
            "conv_fused_activations": dict(sorted(fused.items()))}


def measure(args: argparse.Namespace) -> dict:
    from _protocol import export_fast_fp32, isolated_ms
    from quant import _random_inputs

    from compressdet.models.summary import model_summary

    torch.set_num_threads(args.threads)
    trained = dict(args.model or [])
    work = args.work
    out: dict = {
        "command": " ".join(["python benchmarks/fpn_speed.py", *args.argv]), "preset": args.preset,
        "machine": cpu_platform(), "threads": args.threads, "batch": 1,
        "timer": {"protocol": "isolated_process", "runs": args.runs, "rounds": args.rounds,
                  "note": "ONNX Runtime CPU (ORT_ENABLE_ALL), each graph in a process of its own, graphs "
                          "alternating over rounds, median of all runs (_protocol.isolated_ms)"},
        "fp32": "the fastest exact fp32 export (_protocol.export_fast_fp32)",
        "int8": "the ptq stage's PT2E program (minmax on 2 random images), exported as the stage does",
        "weights": "random: random init with BatchNorm statistics randomised (latency does not depend on the "
                   "values); trained: the --model file",
        "families": {},
    }
    for fam in args.families:
        entry: dict = {"student": STUDENTS[fam], "sizes": {}}
        for hw in args.sizes:
            tag = f"{hw[0]}x{hw[1]}"
            t0 = time.time()
            model, weights = args.loaded[fam] if fam in args.loaded else _model(fam, hw, None)
            calib = [torch.from_numpy(c) for c in _random_inputs(*hw)[1]]  # quant.py speed's calibration images
            d = work / f"{fam}-{tag}" / ("trained" if fam in trained else "random")
            d.mkdir(parents=True, exist_ok=True)
            info = export_fast_fp32(model, d / "fp32.onnx", hw)
            _int8(model, calib, d / "int8.onnx")
            built = time.time() - t0
            ms = isolated_ms({"fp32": d / "fp32.onnx", "int8": d / "int8.onnx"}, work / "latency", runs=args.runs,
                             threads=args.threads, rounds=args.rounds)
            summ = model_summary(model, hw)
            prof = {k: op_profile(d / f"{k}.onnx", args.profile_runs, d / f"profile-{k}") for k in ("fp32", "int8")} \
                if args.profile_runs else None
            fp, i8 = ms["fp32"], ms["int8"]
            entry.update(weights=weights, model=str(trained[fam]) if fam in trained else None,
                         student=getattr(model, "arch", {}).get("name", STUDENTS[fam]))
            entry["sizes"][tag] = {"macs": summ["macs"]["total"], "params": summ["params"]["total"],
                                   "fp32_ms": fp["median_ms"], "int8_ms": i8["median_ms"],
                                   "int8_speedup": fp["median_ms"] / i8["median_ms"],
                                   "fp32_rewrites": info.get("fp32_rewrites"), "latency": {"fp32": fp, "int8": i8},
                                   "op_profile": prof}
            print(f"[{fam} {tag}] fp32 {fp['median_ms']:.2f} ms, int8 {i8['median_ms']:.2f} ms "
                  f"(x{fp['median_ms'] / i8['median_ms']:.2f}); graphs built in {built:.0f}s", flush=True)
        out["families"][fam] = entry
    return out


def render_md(r: dict) -> str:
    lines = [f"ORT CPU latency, batch 1, {r['threads']} thread(s), {r['machine']}; {r['timer']['note']}, "
             f"{r['timer']['runs']} runs over {r['timer']['rounds']} round(s). fp32 = {r['fp32']}; int8 = {r['int8']}; "
             f"weights: {r['weights']}.",
             "", "| family | student | weights | input | MACs | fp32 ms | int8 ms | int8 speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for fam, e in r["families"].items():
        for tag, s in e["sizes"].items():
            lines.append(f"| {fam} | {e['student']} | {e['weights']} | {tag} | {s['macs'] / 1e9:.3f} G "
                         f"| {s['fp32_ms']:.2f} | {s['int8_ms']:.2f} | x{s['int8_speedup']:.2f} |")
    prof = [(fam, tag, s["op_profile"]) for fam, e in r["families"].items() for tag, s in e["sizes"].items()
            if s.get("op_profile")]
    if prof:
        lines += ["", "Where the time goes (ORT profiler, 1 thread, share of kernel time per op type of the optimized "
                  "graph, top 5):", "", "| family | input | fp32 | int8 |", "|---|---|---|---|"]
        for fam, tag, p in prof:
            cells = [", ".join(f"{op} {share * 100:.0f}%" for op, share, _ in p[k]["top"][:5]) for k in ("fp32", "int8")]
            lines.append(f"| {fam} | {tag} | {cells[0]} | {cells[1]} |")
    lines += ["", f"`{r['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", choices=sorted(STUDENTS), default=list(STUDENTS))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--sizes", nargs="+", type=_size, metavar="HxW", help="input sizes (default: the preset's)")
    ap.add_argument("--model", action="append", type=_model_arg, metavar="ROW=PATH",
                    help="time this trained model file (of ROW's family) in ROW instead of a random-init student")
    ap.add_argument("--runs", type=int, help="timed runs per graph (default: the preset's)")
    ap.add_argument("--rounds", type=int, help="processes per graph, alternating (default: the preset's)")
    ap.add_argument("--threads", type=int, help="ORT threads (default: the preset's)")
    ap.add_argument("--profile-runs", type=int, help="runs of ORT's op profiler per graph, 0: none (default: the "
                    "preset's)")
    ap.add_argument("--work", type=Path, help="graphs and timing cache (default benchmarks/.fpn_speed/<preset>)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.runs <= 0 or args.rounds <= 0 or args.threads <= 0 or args.profile_runs < 0:
        ap.error("--runs, --rounds and --threads must be positive, --profile-runs >= 0")
    args.work = args.work or ROOT / "benchmarks" / ".fpn_speed" / args.preset
    fams = [fam for fam, _ in args.model or []]
    for fam in fams:
        if fam not in args.families:
            ap.error(f"--model {fam}=...: {fam} is not in --families ({' '.join(args.families)})")
        if fams.count(fam) > 1:
            ap.error(f"--model {fam}=... given {fams.count(fam)} times; one model file per family")
    if args.results.exists() and not args.results.is_dir():
        ap.error(f"--results {args.results}: exists and is not a folder")
    args.loaded = {}  # trained models, loaded once: a wrong file is a usage error before any work
    for fam, path in args.model or []:
        try:
            args.loaded[fam] = _model(fam, args.sizes[0], path)
        except ValueError as e:
            ap.error(str(e))
    r = measure(args)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "fpn_speed.json", r)
    atomic_write_text(args.results / "fpn_speed.md", "# FPN families: INT8 vs fp32 latency\n\n" + render_md(r))
    print(f"wrote {args.results / 'fpn_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
