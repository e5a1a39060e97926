"""``deploy``: measure every runtime and precision a model can be deployed as here; keep the fastest that
stays within the accuracy tolerance.

Which one is fastest depends on the model, its input size and the CPU (issue #40: OpenVINO's bf16
default beat every INT8 graph on the small student at 192x624, INT8 won on the teacher, and which
INT8 graph won flipped with the size), so it is measured, not assumed. Candidates (CPU): ORT fp32
(the fastest exact fp32 export), OpenVINO f32, OpenVINO's default precision (bf16 where the CPU has
it), ORT INT8 and OpenVINO INT8 of the run's own QAT/PTQ QDQ graph, OpenVINO INT8 from NNCF PTQ of
the fp32 IR; (CUDA) TensorRT fp16 and INT8. Each one's precision is read back from the runtime,
its latency timed in processes of its own (bench's :func:`~compressdet.bench.latency.time_isolated`)
and its mAP measured through bench's evaluation, against PyTorch fp32.
"""

from __future__ import annotations

import contextlib
import gc
import json
import platform
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .._io import atomic_path, atomic_write_json
from ..errors import MissingDependencyError, UserError

__all__ = ["DeployOptions", "deploy", "model_at_size", "read_deploy", "is_deploy_dir", "DEPLOY_JSON", "CANDIDATE_NAMES"]

DEPLOY_JSON = "deploy.json"

#: every candidate, in the order they are listed (CPU ones, then CUDA ones)
CANDIDATE_NAMES = ("ort-fp32", "openvino-f32", "openvino-default", "ort-int8-qdq", "openvino-int8-qdq",
                   "openvino-int8-nncf", "tensorrt-fp16", "tensorrt-int8-qdq")


@dataclass
class DeployOptions:
    """What ``deploy`` measures and how (the CLI flags and the ``kind: deploy`` recipe stage's fields)."""

    target: str = "cpu"  # cpu | cuda
    image_size: tuple[int, int] | None = None  # None: the model's own input size
    #: the largest mAP loss (points, PyTorch fp32 minus the candidate) a candidate may have
    max_map_drop: float = 0.5
    split: str = "val"
    runs: int = 50
    rounds: int = 3
    warmup: int = 5
    threads: int | None = None
    #: train images NNCF calibrates on
    calibration_images: int = 64
    postprocess: dict[str, Any] = field(default_factory=dict)
    protocol: str = "official"
    metric: str | None = None
    max_images: int | None = None


@dataclass
class _Candidate:
    name: str
    backend: str  # a bench backend name (open_backend) or "tensorrt"
    runtime: str
    setting: str
    source: str
    file: Path | None = None
    row: dict[str, Any] = field(default_factory=dict)


def model_at_size(model: torch.nn.Module, size: tuple[int, int]) -> torch.nn.Module:
    """The same weights rebuilt for another input size (anchors / priors follow the size).

    Raises:
        UserError: the model cannot be rebuilt at ``size`` (a weight depends on it).
    """
    from ..models import model_from_arch
    from ..models._builder import layer_shapes, replay_layer_shapes

    if tuple(int(s) for s in model.image_size) == tuple(size):
        return model
    arch = dict(getattr(model, "arch", {}) or {})
    if not arch:
        raise UserError(f"--image-size {size[0]}x{size[1]}: the model has no arch to rebuild it at that size")
    fresh = model_from_arch({**arch, "image_size": list(size)})
    sd = model.state_dict()
    replay_layer_shapes(fresh, sd, layer_shapes(model))
    try:
        fresh.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"--image-size {size[0]}x{size[1]}: the model's weights do not fit it at that size "
                        f"({str(e).strip().splitlines()[0][:160]})") from None
    return fresh.eval()


def deploy(source: Any, out_dir: str | Path, opts: DeployOptions, *, log: Callable[[str], None] = print
           ) -> dict[str, Any]:
    """Measure the candidates of ``source`` (an :class:`~compressdet.export.exporter.ExportSource` with a
    recipe: its data give the calibration and evaluation images), write ``deploy.json``, ``deploy.md``,
    ``deploy.png`` and the chosen artifact into ``out_dir``.

    ``deploy.json`` is written last and removed first: a folder without it is an unfinished deploy,
    which ``compressdet predict --model`` refuses.

    Returns:
        What ``deploy.json`` holds. ``chosen`` is None when no candidate stays within the tolerance.

    Raises:
        UserError: no data to measure accuracy on, a bad size, or (target cuda) no TensorRT.
    """
    from ..bench.latency import set_threads
    from ..export._openvino import openvino_unavailable
    from ..export.exporter import Exporter

    out_dir = Path(out_dir)
    if opts.target not in ("cpu", "cuda"):
        raise UserError(f"--target {opts.target}: expected cpu or cuda")
    if source.recipe is None:
        raise UserError(f"{source.model_path}: deploy measures accuracy on data and the model has no run recipe; "
                        "pass --data RECIPE (a recipe whose data section names the images)")
    if opts.target == "cuda":
        from ..export._tensorrt import tensorrt_unavailable

        why = tensorrt_unavailable("deploy --target cuda (TensorRT fp16/INT8 candidates)")
        if why:
            raise MissingDependencyError(why)
    msize = tuple(int(s) for s in source.model.image_size)
    size = tuple(opts.image_size or msize)
    if size != msize:
        log(f"deploying at {size[0]}x{size[1]} (the model was built for {msize[0]}x{msize[1]}): rebuilt at that size")
        source = replace(source, model=model_at_size(source.model, size))
    model = source.model.eval()
    threads = set_threads(opts.threads)
    notes: list[str] = []
    ov_why = openvino_unavailable("the OpenVINO candidates") if opts.target == "cpu" else "target cuda"
    if ov_why and opts.target == "cpu":
        notes.append(f"OpenVINO candidates not measured: {ov_why}")
        log(f"note: {ov_why}; measuring the ONNX Runtime candidates only")
    has_qdq = source.quant is not None or "onnx_int8" in source.artifacts
    qdq_why = None
    if not has_qdq:
        qdq_why = "the run has no QAT/PTQ INT8 graph for this model (add a qat or ptq stage)"
    elif size != msize:
        qdq_why = f"the run's INT8 graph is fixed at {msize[0]}x{msize[1]}"

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DEPLOY_JSON).unlink(missing_ok=True)  # a stale choice must not stand while this one is made
    for old in out_dir.glob("model.*"):  # nor an earlier chosen file of another format
        if old.suffix in (".onnx", ".xml", ".bin", ".engine"):
            old.unlink()
    work = out_dir / "candidates"
    formats = ["onnx"] + ([] if ov_why else ["openvino"])
    if not qdq_why:
        formats += ["onnx-int8"] + ([] if ov_why else ["openvino-int8"])
    log(f"exporting {', '.join(formats)} -> {work}")
    exported = Exporter(source, work, calibration_images=opts.calibration_images, postprocess=opts.postprocess,
                        log=log).run(formats)
    files = {k: Path(v["path"]) for k, v in exported.items()}
    qdq_label = f"QDQ graph of stage '{source.quant.stage}' ({_placement(source.quant)})" if source.quant else \
        f"QDQ graph of stage '{source.name}'"
    cands = _candidates(opts.target, files, qdq_label)
    skipped: dict[str, str] = {}
    if opts.target == "cpu" and not ov_why:
        from ._nncf import nncf_unavailable, quantize_ir

        why = nncf_unavailable("the OpenVINO INT8 (NNCF PTQ) candidate")
        if why:
            skipped["openvino-int8-nncf"] = why
            notes.append(f"openvino-int8-nncf not measured: {why}")
            log(f"note: {why}")
        else:
            from ..export.exporter import calibration_images

            imgs = calibration_images(source, opts.calibration_images, split="train", log=log)
            nncf_xml = work / f"{source.name}.nncf.int8.xml"
            log(f"NNCF post-training quantization of the fp32 IR on {len(imgs)} train images -> {nncf_xml}")
            info = quantize_ir(files["openvino"], nncf_xml, [i.numpy() for i in imgs])
            cands["openvino-int8-nncf"] = _Candidate(
                "openvino-int8-nncf", "openvino-int8", "OpenVINO", "INT8 IR, INFERENCE_PRECISION_HINT left default",
                f"nncf.quantize of the fp32 IR ({info['calibration_images']} train images, nncf {info['nncf']})",
                nncf_xml)
    if opts.target == "cuda":
        _build_engines(cands, files, work, skipped, log)
    for name in CANDIDATE_NAMES:  # why each candidate of this target that is not measured is missing
        if name in cands or name in skipped or name.startswith("tensorrt") != (opts.target == "cuda"):
            continue
        skipped[name] = (ov_why if name.startswith("openvino") else None) or qdq_why or "not available"

    bopts = _bench_options(opts)
    ref = _reference_map(model, source.recipe, size, bopts, log)
    key = ref["map_key"]
    for c in cands.values():
        _measure_accuracy(c, model, source.recipe, size, bopts, threads, key, ref["map"], log)
        gc.collect()  # no idle session of this process may run threads while the children time
    _measure_latency([c for c in cands.values() if "error" not in c.row], size, opts, threads, log)

    rows = [c for c in cands.values()]
    chosen = _choose(rows, opts.max_map_drop)
    order = {n: i for i, n in enumerate(CANDIDATE_NAMES)}
    cand_rows = [_row(c, out_dir) for c in sorted(rows, key=lambda c: order[c.name])]
    cand_rows += [{"name": n, "status": "skipped", "reason": why} for n, why in skipped.items()]
    cand_rows.sort(key=lambda r: order[r["name"]])
    report = {
        "model": {"stage": source.name, "file": str(source.model_path),
                  "quant_stage": source.quant.stage if source.quant else None,
                  "run_dir": str(source.run_dir) if source.run_dir else None},
        "target": opts.target, "image_size": list(size), "batch": 1, "split": opts.split,
        "metric": ref["metric"], "map_key": key, "protocol": opts.protocol, "max_map_drop": opts.max_map_drop,
        "threads": threads, "runs": opts.runs, "rounds": opts.rounds, "warmup": opts.warmup,
        "timer": "isolated_process" if opts.target == "cpu" else "cuda_events",
        "reference": {"backend": "torch", "precision": "fp32", "map": ref["map"]},
        "candidates": cand_rows, "chosen": chosen.name if chosen else None,
        "classes": list(source.classes), "postprocess": dict(opts.postprocess), "notes": notes,
        "cpu": _cpu(), "versions": _versions(),
    }
    report.update(_ratios(cand_rows, chosen.name if chosen else None))
    if chosen is not None:
        report["artifact"] = _copy_artifact(chosen, out_dir)
        report["summary"] = _summary_line(report, out_dir)
    else:
        report["artifact"] = None
        report["summary"] = (f"no candidate keeps {ref['metric_label']} within {opts.max_map_drop} points of "
                             f"PyTorch fp32 ({ref['map']:.2f}); see the table")
    from .report import write_reports

    write_reports(report, out_dir)
    atomic_write_json(out_dir / DEPLOY_JSON, report)  # last: the folder is a finished deploy from here on
    return report


# ------------------------------------------------------------------------------------------------
def _placement(quant: Any) -> str:
    """``ptq, openvino placement, 7-bit activations``: the stage kind and how its INT8 graph was quantized
    (``quant.quantizer``, and ``reduce_range`` as applied; runs from before these settings: x86)."""
    meta = quant.meta or {}
    placement = meta.get("quantizer") or (meta.get("quant") or {}).get("quantizer") or "x86"
    return f"{quant.kind}, {placement} placement" + (", 7-bit activations" if meta.get("reduce_range") else "")


def _candidates(target: str, files: dict[str, Path], qdq_label: str) -> dict[str, _Candidate]:
    out: dict[str, _Candidate] = {}
    if target == "cuda":
        return out  # engines are built by _build_engines
    out["ort-fp32"] = _Candidate("ort-fp32", "ort", "ONNX Runtime", "CPUExecutionProvider, fp32",
                                 "fp32 ONNX (exact float rewrites)", files["onnx"])
    if "openvino" in files:
        out["openvino-f32"] = _Candidate("openvino-f32", "openvino-f32", "OpenVINO", "INFERENCE_PRECISION_HINT=f32",
                                         "IR of the fp32 ONNX", files["openvino"])
        out["openvino-default"] = _Candidate("openvino-default", "openvino", "OpenVINO",
                                             "INFERENCE_PRECISION_HINT left default", "IR of the fp32 ONNX",
                                             files["openvino"])
    if "onnx-int8" in files:
        out["ort-int8-qdq"] = _Candidate("ort-int8-qdq", "ort-int8", "ONNX Runtime", "CPUExecutionProvider, QDQ int8",
                                         qdq_label, files["onnx-int8"])
    if "openvino-int8" in files:
        out["openvino-int8-qdq"] = _Candidate("openvino-int8-qdq", "openvino-int8", "OpenVINO",
                                              "INT8 IR, INFERENCE_PRECISION_HINT left default",
                                              f"IR of the {qdq_label}", files["openvino-int8"])
    return out


def _build_engines(cands: dict[str, _Candidate], files: dict[str, Path], work: Path, skipped: dict[str, str],
                   log: Callable[[str], None]) -> None:
    """TensorRT fp16 from the fp32 ONNX and INT8 from the run's QDQ graph (explicit quantization)."""
    from ..export._tensorrt import build_engine

    for name, src, int8 in (("tensorrt-fp16", files.get("onnx"), False),
                            ("tensorrt-int8-qdq", files.get("onnx-int8"), True)):
        if src is None:
            continue
        eng = work / f"{Path(src).name.split('.')[0]}{'.int8' if int8 else ''}.engine"
        try:
            log(f"building the TensorRT {'INT8' if int8 else 'fp16'} engine -> {eng}")
            build_engine(src, eng, int8=int8, fp16=True, max_batch=1)
        except (UserError, RuntimeError) as e:
            skipped[name] = f"engine not built: {str(e).splitlines()[0][:160]}"
            continue
        cands[name] = _Candidate(name, "tensorrt", "TensorRT", "INT8 + fp16 engine" if int8 else "fp16 engine",
                                 f"{'QDQ' if int8 else 'fp32'} ONNX {Path(src).name}", eng)


def _bench_options(opts: DeployOptions) -> Any:
    from ..bench.runner import BenchOptions

    return BenchOptions(split=opts.split, postprocess=dict(opts.postprocess), protocol=opts.protocol,
                        metric=opts.metric, max_images=opts.max_images, runs=opts.runs, warmup=opts.warmup)


def _reference_map(model: torch.nn.Module, recipe: Any, size: tuple[int, int], bopts: Any,
                   log: Callable[[str], None]) -> dict[str, Any]:
    from ..bench.runner import _evaluate, _metric_label, _torch_runner, map_key

    res = _evaluate(_torch_runner(model), 8, recipe, size, int(getattr(model, "num_classes", 3)), bopts, model=model)
    key = map_key(res["metric"], bopts.protocol)
    label = _metric_label(res["metric"], bopts.protocol)
    log(f"PyTorch fp32 reference on {bopts.split}: {label} {res[key]:.2f}")
    return {"map": float(res[key]), "metric": res["metric"], "map_key": key, "metric_label": label}


def _measure_accuracy(c: _Candidate, model: torch.nn.Module, recipe: Any, size: tuple[int, int], bopts: Any,
                      threads: int, key: str, ref: float, log: Callable[[str], None]) -> None:
    """Open the candidate (precision read back from its runtime) and measure its mAP on the split."""
    from ..bench.backends import open_backend
    from ..bench.runner import _evaluate

    try:
        if c.backend == "tensorrt":
            from ..export._tensorrt import TensorRTRunner

            fn: Any = TensorRTRunner(c.file)
            c.row.update(precision="int8" if "int8" in c.name else "fp16")
            batch = 1
        else:
            ob = open_backend(c.backend, c.file, threads=threads)
            fn = ob.fn
            c.row.update(precision=ob.precision, **{k: v for k, v in ob.info.items() if k == "inference_precision"})
            batch = 1 if ob.input_shape is not None and isinstance(ob.input_shape[0], int) else 8
        res = _evaluate(fn, batch, recipe, size, int(getattr(model, "num_classes", 3)), bopts, model=model)
    except UserError as e:  # a runtime that cannot load this graph: shown, not chosen
        c.row["error"] = str(e)
        log(f"  {c.name}: not measured ({e})")
        return
    c.row["map"] = round(float(res[key]), 4)
    c.row["map_drop"] = round(ref - float(res[key]), 4)
    log(f"  {c.name}: {c.row['precision']}, mAP {c.row['map']:.2f} (drop {c.row['map_drop']:+.2f})")


def _measure_latency(cands: list[_Candidate], size: tuple[int, int], opts: DeployOptions, threads: int,
                     log: Callable[[str], None]) -> None:
    """CPU candidates: each in fresh processes of its own, alternating over rounds; TensorRT: CUDA events."""
    from ..bench.latency import TimingJob, time_isolated

    cpu = {c.name: c for c in cands if c.backend != "tensorrt"}
    if cpu:
        log(f"timing {len(cpu)} candidates at {size[0]}x{size[1]}, batch 1, each in its own process "
            f"({opts.rounds} rounds, {threads} threads)")
        res = time_isolated({n: TimingJob(c.backend, str(c.file), (1,), size) for n, c in cpu.items()},
                            runs=opts.runs, rounds=opts.rounds, threads=threads, warmup=opts.warmup)
        for n, c in cpu.items():
            cell = res[n].get("b1", {})
            c.row["precision"] = res[n]["precision"]  # what the timed process computed in
            if "median_ms" in cell:
                c.row["latency"] = {k: cell[k] for k in ("median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "rounds",
                                                         "pids", "timer")}
                log(f"  {n}: median {cell['median_ms']:.2f} ms, p90 {cell['p90_ms']:.2f} ms")
            else:
                c.row["error"] = cell.get("skipped", "not timed")
    for c in cands:
        if c.backend == "tensorrt":
            from ..bench.runner import _time_tensorrt
            from ..export._tensorrt import TensorRTRunner

            cell = _time_tensorrt(TensorRTRunner(c.file), size, 1, _bench_options(opts))
            if "median_ms" in cell:
                c.row["latency"] = cell
            else:
                c.row["error"] = cell.get("skipped", "not timed")


def _choose(cands: list[_Candidate], max_drop: float) -> _Candidate | None:
    """The fastest measured candidate whose mAP drop is within ``max_drop``; every other one says why not."""
    ok = [c for c in cands if "error" not in c.row and "latency" in c.row and c.row["map_drop"] <= max_drop]
    best = min(ok, key=lambda c: c.row["latency"]["median_ms"], default=None)
    for c in cands:
        if "error" in c.row:
            c.row.update(status="failed", reason=c.row["error"])
        elif c.row["map_drop"] > max_drop:
            c.row.update(status="rejected", reason=f"mAP drop {c.row['map_drop']:.2f} > --max-map-drop {max_drop}")
        elif c is best:
            c.row.update(status="chosen", reason="fastest within the mAP tolerance")
        else:
            c.row.update(status="slower", reason=f"median {c.row['latency']['median_ms']:.2f} ms vs the chosen "
                                                 f"{best.row['latency']['median_ms']:.2f} ms")
    return best


def _row(c: _Candidate, out_dir: Path) -> dict[str, Any]:
    f = Path(c.file) if c.file else None
    rel = str(f.relative_to(out_dir)) if f and f.is_relative_to(out_dir) else (str(f) if f else None)
    return {"name": c.name, "backend": c.backend, "runtime": c.runtime, "setting": c.setting, "source": c.source,
            "file": rel, **{k: v for k, v in c.row.items() if k != "error"}}


def _ratios(rows: list[dict[str, Any]], chosen: str | None) -> dict[str, Any]:
    """The chosen candidate against the fastest exact fp32 candidate and against OpenVINO's default."""
    def med(r: dict[str, Any] | None) -> float | None:
        return (r or {}).get("latency", {}).get("median_ms")

    by = {r["name"]: r for r in rows}
    exact = [r for r in rows if r["name"] in ("ort-fp32", "openvino-f32") and r.get("precision") == "fp32" and med(r)]
    best_exact = min(exact, key=med, default=None)
    c = by.get(chosen) if chosen else None
    ov = by.get("openvino-default")
    return {"best_exact_fp32": best_exact["name"] if best_exact else None,
            "speedup_vs_best_exact_fp32": round(med(best_exact) / med(c), 3) if med(c) and med(best_exact) else None,
            "speedup_vs_openvino_default": round(med(ov) / med(c), 3) if med(c) and med(ov) else None,
            "map_drop": c.get("map_drop") if c else None}


def _copy_artifact(c: _Candidate, out_dir: Path) -> dict[str, Any]:
    """The chosen file(s) into ``out_dir`` as ``model[.int8].onnx`` / ``model[.int8].xml`` + ``.bin`` /
    ``model[.int8].engine``, each written atomically."""
    src = Path(c.file)
    int8 = c.row.get("precision") == "int8"
    stem = "model.int8" if int8 else "model"
    pairs = [(src, out_dir / f"{stem}{src.suffix}")]
    if src.suffix == ".xml":
        pairs.insert(0, (src.with_suffix(".bin"), out_dir / f"{stem}.bin"))  # weights first, as convert_to_ir
    for a, b in pairs:
        with atomic_path(b) as tmp:
            shutil.copyfile(a, tmp)
    return {"name": c.name, "file": pairs[-1][1].name, "files": [b.name for _, b in pairs], "backend": c.backend,
            "runtime": c.runtime, "setting": c.setting, "precision": c.row.get("precision")}


def _summary_line(rep: dict[str, Any], out_dir: Path) -> str:
    a = rep["artifact"]
    c = next(r for r in rep["candidates"] if r["name"] == rep["chosen"])
    h, w = rep["image_size"]
    return (f"{out_dir / a['file']}: {a['runtime']} ({a['setting']}, computes in {c['precision']}), "
            f"{c['latency']['median_ms']:.2f} ms median at {h}x{w}, batch 1, {rep['threads']} threads; "
            f"mAP {c['map']:.2f} on {rep['split']} ({round(c['map'] - rep['reference']['map'], 2) + 0.0:+.2f} vs PyTorch fp32 "
            f"{rep['reference']['map']:.2f})")


def _cpu() -> str:
    cap = ""
    with contextlib.suppress(Exception):
        cap = f", torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}{cap}"


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for mod in ("onnxruntime", "openvino", "nncf", "tensorrt"):
        with contextlib.suppress(ImportError):
            out[mod] = __import__(mod).__version__
    return out


def is_deploy_dir(path: str | Path) -> bool:
    """A folder ``deploy`` wrote (finished or not)."""
    p = Path(path)
    return p.is_dir() and ((p / DEPLOY_JSON).is_file() or (p / "candidates").is_dir())


def read_deploy(path: str | Path) -> dict[str, Any]:
    """``deploy.json`` of a deploy folder, with ``artifact.path``: the chosen file (what ``predict --model
    RUN/deploy`` runs, on ``artifact.backend``).

    Raises:
        UserError: no finished deploy there, or one that chose nothing.
    """
    p = Path(path) / DEPLOY_JSON
    if not p.is_file():
        raise UserError(f"{path}: no {DEPLOY_JSON} (an unfinished deploy; run compressdet deploy again)")
    try:
        rep = json.loads(p.read_text())
        a = rep.get("artifact")
    except (ValueError, AttributeError):
        raise UserError(f"{p}: not a deploy report (expected the JSON compressdet deploy writes)") from None
    if not a:
        raise UserError(f"{p}: the deploy chose no candidate ({rep.get('summary', '')})")
    a["path"] = str(Path(path) / a["file"])
    if not Path(a["path"]).is_file():
        raise UserError(f"{p}: the chosen file {a['file']} is missing beside it")
    return rep
