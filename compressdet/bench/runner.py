"""Measure every model stage of a run: MACs, params, size, latency per backend, mAP on val.

A row is one (stage, precision): the fp32 model of each stage that has one, and its INT8 QDQ graph
where one was exported (by an export stage, ``compressdet export`` into ``RUN/exports/``, or the
QAT/PTQ stage itself). Backends come from the export format table; ``torch`` runs the model.
``tensorrt`` runs the run's engine (or one built here from the row's ONNX) on the GPU, timed with
CUDA events; without tensorrt/CUDA it is an error, or a recorded skip when ``skip_unavailable``.
"""

from __future__ import annotations

import contextlib
import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .._io import sha256_file
from ..errors import MissingDependencyError, UserError
from ..eval.evaluator import resolve_metric
from ..export.formats import backend_format
from ..export.runtime import outputs_max_abs_diff
from .backends import open_backend, shape_mismatch
from .latency import TimingJob, measure_cuda_latency, set_threads, time_isolated

__all__ = ["Variant", "collect_variants", "bench_run", "BenchOptions"]


@dataclass
class Variant:
    """One row of the report.

    A quantized stage (qat/ptq) gives an int8 row whose ``model_path`` is its float source's model
    (MACs, params) and whose files are the stage's own: ``ort-int8`` its QDQ graph, ``torch`` its
    ``quantized`` .pt2 program.
    """

    stage: str
    kind: str
    source: str | None  # the 'from' stage (for a quantized stage: its float source)
    precision: str  # fp32 | int8
    model_path: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # backend -> file (onnx / int8 onnx / engine / .pt2)
    quantization: str | None = None
    quant_stage: bool = False  # a qat/ptq stage's own int8 model (not a PTQ of a float stage)
    stage_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.quant_stage:
            return f"{self.stage} ({self.kind})"
        return self.stage if self.precision == "fp32" else f"{self.stage} (int8)"


@dataclass
class BenchOptions:
    backends: list[str] = field(default_factory=lambda: ["torch", "ort"])
    image_size: tuple[int, int] | None = None
    runs: int = 50
    warmup: int = 5
    #: isolated-process timing: each (model, backend) is timed in ``rounds`` fresh processes of its own
    rounds: int = 3
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: int | None = None
    val: bool = True
    #: the split the mAP column is measured on ("val" or "test")
    split: str = "val"
    stages: list[str] | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)
    protocol: str = "official"
    #: "kitti" | "coco" | None: the data's own (kitti for kitti/synth, coco for coco/yolo/voc)
    metric: str | None = None
    max_images: int | None = None
    #: a backend whose dependency is absent (tensorrt without the package or CUDA) is skipped with a
    #: note and ``{"skipped": reason}`` in the report instead of raising MissingDependencyError; the
    #: recipe bench stage sets it, since shipped recipes list tensorrt for GPU machines
    skip_unavailable: bool = False


def _onnx_matches(path: Path, model_path: Path) -> bool:
    """True when the ONNX file was exported from this exact model file (metadata sha256)."""
    from ..export.runtime import onnx_metadata

    try:
        return onnx_metadata(path).get("source_sha256") in (None, sha256_file(model_path))
    except Exception:  # noqa: BLE001 - an unreadable file simply is not used
        return False


def collect_variants(run_dir: Path, stages: list[str] | None = None) -> list[Variant]:
    """Rows of a run, in recipe order (see the module docstring).

    Raises:
        UserError: a name in ``stages`` is not a finished model (or qat/ptq) stage of the run.
    """
    from ..export.quantized import float_source, is_quant_stage, quantization_label
    from ..export.runtime import onnx_metadata
    from ..rundir import load_manifest

    man = load_manifest(run_dir)["stages"]
    done = {n: r for n, r in man.items() if r.get("status") == "done"}
    arts = {n: {k: run_dir / a["path"] for k, a in r.get("artifacts", {}).items()} for n, r in done.items()}
    quant_names = {n for n in done if is_quant_stage(done[n])}
    model_names = [n for n in done if "model" in arts[n] or n in quant_names]
    if stages:
        bad = [s for s in stages if s not in model_names]
        if bad:
            raise UserError(f"{run_dir}: no finished model stage named {', '.join(bad)} "
                            f"(model and qat/ptq stages: {', '.join(model_names) or 'none'})")
        model_names = [n for n in model_names if n in stages]
    floats = {}
    for n in quant_names:
        with contextlib.suppress(UserError):
            floats[n] = float_source(done, n)
    exports: dict[str, dict[str, Path]] = {}
    for n, r in done.items():  # export stages: artifacts belong to their 'from' stage
        src = (r.get("inputs") or {}).get("from")
        if r.get("kind") != "export" or not src:
            continue
        if src in quant_names:  # fp32 files are the float source's, int8 ones the quantized stage's
            for k, p in arts[n].items():
                int8 = k in ("onnx_int8", "openvino_int8", "openvino_int8_bin") or str(p).endswith(".int8.engine")
                owner = src if int8 else floats.get(src)
                if owner and not (k == "onnx" and not _onnx_matches(p, arts[owner]["model"])):
                    exports.setdefault(owner, {}).setdefault(k, p)
        else:
            exports.setdefault(src, {}).update(arts[n])
    out: list[Variant] = []
    for n in model_names:
        rec, a = done[n], arts[n]
        src = (rec.get("inputs") or {}).get("from")
        if n in quant_names:
            if n not in floats:
                continue  # no float source to measure MACs against: float_source raised; not a row
            files = {"ort-int8": a["onnx_int8"]}
            if "quantized" in a:
                files["torch"] = a["quantized"]
            te = exports.get(n, {}).get("tensorrt")
            if te is not None:
                files["tensorrt"] = te
            ov = exports.get(n, {}).get("openvino_int8") or run_dir / "exports" / f"{n}.int8.xml"
            if Path(ov).is_file():
                files["openvino-int8"] = Path(ov)
            q = Variant(n, rec.get("kind", "?"), floats[n], "int8", arts[floats[n]]["model"], files,
                        quantization_label(rec.get("kind"), rec.get("meta")), quant_stage=True,
                        stage_metrics={k: rec.get("metrics", {}).get(k) for k in
                                       ("map40", "map11", "ort_map40", "ort_map11", "primary", "ort_primary", "graph")})
            out.append(q)
            continue
        files = dict(exports.get(n, {}))
        files.update({k: v for k, v in a.items() if k in ("onnx", "onnx_int8", "tensorrt")})
        for key, suffix in (("onnx", ".onnx"), ("onnx_int8", ".int8.onnx")):
            p = run_dir / "exports" / f"{n}{suffix}"
            if key not in files and p.is_file() and _onnx_matches(p, a["model"]):
                files[key] = p
                # an IR in RUN/exports was converted from the ONNX beside it (compressdet export --openvino)
                xml = p.with_name(p.name[:-len(".onnx")] + ".xml")
                ov_key = "openvino_int8" if key == "onnx_int8" else "openvino"
                if ov_key not in files and xml.is_file():
                    files[ov_key] = xml
        v = Variant(n, rec.get("kind", "?"), src, "fp32", a["model"])
        if "onnx" in files:
            v.files["ort"] = files["onnx"]
        if "openvino" in files:
            v.files["openvino"] = files["openvino"]
        if "tensorrt" in files and not str(files["tensorrt"]).endswith(".int8.engine"):
            v.files["tensorrt"] = files["tensorrt"]
        out.append(v)
        if "onnx_int8" in files:
            q = Variant(n, rec.get("kind", "?"), src, "int8", a["model"], {"ort-int8": files["onnx_int8"]})
            with contextlib.suppress(Exception):
                q.quantization = onnx_metadata(files["onnx_int8"]).get("quantization")
            if q.quantization is None:
                q.quantization = f"{rec.get('kind')} stage" if rec.get("kind") in ("qat", "ptq") else None
            if "tensorrt" in files and str(files["tensorrt"]).endswith(".int8.engine"):
                q.files["tensorrt"] = files["tensorrt"]
            if "openvino_int8" in files:
                q.files["openvino-int8"] = files["openvino_int8"]
            out.append(q)
    return out


def _row_param_bytes(v: Variant, model: torch.nn.Module) -> int | None:
    """A row's ``param_bytes``: the float model's parameters, or an int8 row's int8 weights (its QDQ
    graph's; None when there is no graph to read them from)."""
    if v.precision == "int8":
        with contextlib.suppress(Exception):
            return int8_weight_bytes(v.files["ort-int8"])
        return None
    return param_bytes(model)


def _weights_bytes(v: Variant, model: torch.nn.Module) -> int:
    """Bytes of the weights as stored: ONNX initializers of an int8 graph (int8 weights, float biases and
    scales), the state_dict tensors (fp32) of a float model."""
    if v.precision == "int8" and "ort-int8" in v.files:
        with contextlib.suppress(Exception):
            import onnx
            from onnx import numpy_helper

            m = onnx.load(str(v.files["ort-int8"]))
            total = sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer)
            for n in m.graph.node:  # the dynamo exporter stores some constants as Constant nodes
                if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
                    total += numpy_helper.to_array(n.attribute[0].t).nbytes
            return int(total)
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def param_bytes(model: torch.nn.Module) -> int:
    """The model's parameter bytes: numel x element size of every parameter (BN running statistics and
    other buffers excluded), so a pruned model is smaller by what it lost, whatever its file holds."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def int8_weight_bytes(onnx_path: str | Path) -> int:
    """Bytes of the int8 weight tensors of a QDQ graph: the 8-bit constants it dequantizes
    (``DequantizeLinear`` input 0) or multiplies as integers (``MatMulInteger``/``ConvInteger`` input 1);
    scales, zero points and float biases are not counted."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    consts = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:  # the dynamo exporter stores some constants as Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[n.output[0]] = n.attribute[0].t
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    names: set[str] = set()
    for n in m.graph.node:
        idx = {"DequantizeLinear": 0, "MatMulInteger": 1, "ConvInteger": 1}.get(n.op_type)
        if idx is not None and len(n.input) > idx and n.input[idx] in consts:
            names.add(n.input[idx])
    return int(sum(numpy_helper.to_array(consts[k]).nbytes for k in names
                   if consts[k].data_type in eight_bit and len(consts[k].dims) > 1))


def _quantized_runner(path: Path) -> tuple[Callable[[np.ndarray], Any], list]:
    """The ``torch`` backend of a quantized stage: its .pt2 int8 program (static batch 1); returns its raw
    outputs as the other backends do (the head array, or a tuple for an FPN family)."""
    from ..export.quantized import load_quantized_program
    from ..export.runtime import raw_outputs

    try:
        prog = load_quantized_program(path)
    except Exception as e:  # noqa: BLE001 - reported as an n/a cell with the reason
        raise UserError(f"quantized .pt2 program not loadable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    shape = [1, 3, None, None]  # torch.export fixed the example's batch of 1

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return raw_outputs(prog(torch.from_numpy(x)))

    return run, shape


# ------------------------------------------------------------------------------------------------
# runners: backend -> callable(images np [N,3,H,W]) -> head np
# ------------------------------------------------------------------------------------------------
def _torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
            return tuple(o.numpy() for o in out) if isinstance(out, (tuple, list)) else out.numpy()

    return run


def _ort_runner(path: Path, threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], list]:
    from ..export.runtime import onnx_input_shape, ort_run, ort_session

    sess = ort_session(path, threads=threads)

    def run(x: np.ndarray) -> Any:  # the head tensor, or all raw outputs of a multi-output family
        out = ort_run(sess, x)
        return out[0] if len(out) == 1 else tuple(out)

    return run, onnx_input_shape(sess)


def _ensure_onnx(v: Variant, model: torch.nn.Module, out_dir: Path, dynamic: bool,
                 log: Callable[[str], None]) -> Path:
    """The row's fp32 ONNX, exported (and verified) into the bench folder when the run has none."""
    from ..export._onnx import export_onnx

    p = out_dir / "onnx" / f"{v.stage}.onnx"
    if not p.is_file():
        log(f"  {v.stage}: no ONNX in the run; exporting one for the ort backend -> {p}")
        from ..conventions import MEAN_BGR
        from ..models import load_model

        h, w = (int(s) for s in model.image_size)
        family = model.export_metadata() if hasattr(model, "export_metadata") else {}
        meta = {**family, "classes": load_model(v.model_path)[1].get("classes"), "mean_bgr": list(MEAN_BGR),
                "input_size": f"{h}x{w}", "arch": getattr(model, "arch", {}), "precision": "fp32"}
        # the same keys as an exported graph's, so predict/deploy read this file's classes and family too
        export_onnx(model, p, image_size=(h, w), dynamic_batch=dynamic,
                    metadata={**{k: x for k, x in meta.items() if x is not None}, "stage": v.stage,
                              "source_sha256": sha256_file(v.model_path)}, log=log)
    return p


def _ensure_engine(v: Variant, model: torch.nn.Module, out_dir: Path, opts: BenchOptions, size: tuple[int, int],
                   msize: tuple[int, int], log: Callable[[str], None]) -> Path:
    """The row's TensorRT engine: the run's, else built here from the row's ONNX (INT8 from its QDQ graph)."""
    from ..export._tensorrt import build_engine

    if "tensorrt" in v.files:
        return v.files["tensorrt"]
    int8 = v.precision == "int8"
    if int8:
        onnx = v.files["ort-int8"]
    else:
        onnx = v.files.get("ort") or _ensure_onnx(v, model, out_dir, max(opts.batch_sizes) > 1 or size != msize, log)
        v.files["ort"] = onnx
    p = out_dir / "tensorrt" / f"{v.stage}{'.int8' if int8 else ''}.engine"
    if not p.is_file():
        log(f"  {v.label}: no TensorRT engine in the run; building one from {onnx} -> {p}")
        p.parent.mkdir(parents=True, exist_ok=True)
        build_engine(onnx, p, int8=int8, max_batch=max(8, *opts.batch_sizes))
    return p


def _time_tensorrt(runner: Any, size: tuple[int, int], batch: int, opts: BenchOptions) -> dict[str, Any]:
    """CUDA-event latency of one engine call at ``batch`` (input resident on the GPU, outputs preallocated)."""
    from ..export._onnx import synthetic_image

    if batch > runner.max_batch:
        return {"skipped": f"engine accepts batch <= {runner.max_batch}"}
    x = runner.to_device(synthetic_image(size).repeat(batch, 1, 1, 1))
    runner.stream.wait_stream(torch.cuda.current_stream(runner.device))
    runner.bind(x)
    return measure_cuda_latency(runner.enqueue, runner.stream, runs=opts.runs, warmup=opts.warmup)


# ------------------------------------------------------------------------------------------------
def _evaluate(run: Callable[[np.ndarray], np.ndarray], batch: int, recipe: Any, image_size: tuple[int, int],
              num_classes: int, opts: BenchOptions, model: Any = None) -> dict[str, Any]:
    """AP of ``run`` on the run's ``opts.split`` (outputs decoded by the same PostProcessor: ``model``'s own
    when it is a contract detector), by the data's metric (``opts.metric``): the evaluation loop the
    trainer and the quant stages use."""
    from ..eval.evaluator import DetectionEvaluator
    from ..models.contract import is_detector
    from ..models.postprocess import PostProcessor

    cfg = recipe.data.model_copy(update={"image_size": tuple(image_size)})
    max_images = opts.max_images
    if opts.split == "val" and opts.max_images:
        cfg, max_images = cfg.model_copy(update={"max_val_images": opts.max_images}), None
    if is_detector(model) and getattr(model, "family", "shuffledet") != "shuffledet":
        pp = model.postprocessor(opts.postprocess)
    else:
        pp = PostProcessor(image_size, num_classes=num_classes, **opts.postprocess)
    ev = DetectionEvaluator(cfg, post=pp, split=opts.split, metric=opts.metric, protocol=opts.protocol,
                            batch_size=batch, max_images=max_images)

    def head_fn(x: torch.Tensor) -> Any:
        out = run(x.float().numpy())
        return tuple(torch.from_numpy(np.asarray(o)) for o in out) if isinstance(out, tuple) else \
            torch.from_numpy(np.asarray(out))

    return ev(head_fn)


def bench_run(run_dir: str | Path, out_dir: str | Path, opts: BenchOptions, *, recipe: Any = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark a run and write ``report.json``, ``report.md`` and ``pareto.png`` into ``out_dir``.

    Returns:
        The report dict (what ``report.json`` holds).
    """
    from ..export._onnx import synthetic_image
    from ..models import load_model, model_summary
    from .report import write_reports

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    for b in opts.backends:
        backend_format(b)  # unknown backend -> UserError with the valid list
    notes: list[str] = []
    unavailable: dict[str, str] = {}
    if "tensorrt" in opts.backends:  # fail (or decide to skip) before any work
        from ..export._tensorrt import tensorrt_unavailable

        why = tensorrt_unavailable("the bench tensorrt backend")
        if why and not opts.skip_unavailable:
            raise MissingDependencyError(why)
        if why:
            unavailable["tensorrt"] = why
            notes.append(f"tensorrt backend skipped: {why}")
            log(f"note: skipping the tensorrt backend ({why})")
    for b in [b for b in opts.backends if b.startswith("openvino")]:
        from ..export._openvino import openvino_unavailable

        why = openvino_unavailable(f"the bench {b} backend")
        if why and not opts.skip_unavailable:
            raise MissingDependencyError(why)
        if why:
            unavailable[b] = why
            notes.append(f"{b} backend skipped: {why}")
            log(f"note: skipping the {b} backend ({why})")
    if recipe is None and (run_dir / "recipe.yaml").is_file():
        from ..recipe import load_recipe

        recipe = load_recipe(run_dir / "recipe.yaml")
    if opts.val and recipe is None:
        log("  note: the run has no recipe.yaml; mAP is skipped")
    threads = set_threads(opts.threads)
    variants = collect_variants(run_dir, opts.stages)
    if not variants:
        raise UserError(f"{run_dir}: no finished stage with a model to benchmark")
    models: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    timing_jobs: dict[tuple[int, str], TimingJob] = {}
    for v in variants:
        key = str(v.model_path)
        if key not in models:
            models[key] = load_model(v.model_path)
        model, meta = models[key]
        msize = tuple(int(s) for s in model.image_size)
        size = tuple(opts.image_size or msize)
        summ = model_summary(model, size)
        row: dict[str, Any] = {
            "label": v.label, "stage": v.stage, "kind": v.kind, "from": v.source, "precision": v.precision,
            "quantization": v.quantization, "image_size": list(size),
            "macs": summ["macs"], "params": summ["params"], "params_with_bn_stats": summ["params_with_bn_stats"],
            "files": {k: str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p) for k, p in v.files.items()},
            "file_bytes": (v.files["ort-int8"].stat().st_size if v.precision == "int8"
                           else v.model_path.stat().st_size),
            "weights_bytes": _weights_bytes(v, model), "weights_dtype": "int8" if v.precision == "int8" else "fp32",
            "param_bytes": _row_param_bytes(v, model),
            "latency": {}, "eval": None, "eval_backend": None}
        if v.quant_stage:
            row["float_source"] = v.source
            row["macs_params_from"] = v.source  # MACs/params are the float source's; its weights are int8 here
            row["stage_metrics"] = v.stage_metrics
            if "torch" in v.files:
                row["quantized_bytes"] = v.files["torch"].stat().st_size
        log(f"{v.label}: backbone {summ['macs']['backbone'] / 1e9:.3f} GMACs, {summ['params']['total'] / 1e6:.3f} M params")
        runners: dict[str, tuple[Callable, list | None]] = {}
        row["backends"] = {}
        x_check = synthetic_image(msize)
        with torch.inference_mode():  # PyTorch fp32: what every backend's output is compared with
            ref_check = _torch_runner(model)(x_check.numpy())
        for backend in opts.backends:
            backend_format(backend)  # validates the name
            if not _applies(v, backend):
                continue
            if backend in unavailable:
                row["latency"][backend] = {"skipped": unavailable[backend]}
                continue
            try:
                if backend == "tensorrt":
                    from ..export._tensorrt import TensorRTRunner

                    v.files["tensorrt"] = _ensure_engine(v, model, out_dir, opts, size, msize, log)
                    trt = TensorRTRunner(v.files["tensorrt"])
                    runners[backend] = (trt, trt.input_shape)
                    continue
                path = _backend_file(v, backend, model, out_dir, opts, size, msize, log)
                ob = open_backend(backend, path, threads=threads)
            except UserError as e:  # MissingDependencyError included: an absent optional backend is a cell
                row["latency"][backend] = {"skipped": str(e)}
                log(f"  {backend}: skipped ({e})")
                continue
            runners[backend] = (ob.fn, ob.input_shape)
            row["latency"][backend] = {}  # filled by the isolated-process timing below
            info = {"precision": ob.precision, **ob.info, "file": _rel(path, run_dir)}
            if ob.input_shape is None or shape_mismatch(ob.input_shape, 1, msize) is None:  # takes one image
                out = ob.fn(x_check.numpy())
                info["max_abs_diff_vs_torch_fp32"] = outputs_max_abs_diff(out, ref_check)
                info["detection_agreement_vs_torch_fp32"] = _agreement(ref_check, out, msize, model, opts)
            row["backends"][backend] = info
            if backend != "tensorrt":
                timing_jobs[(len(rows), backend)] = TimingJob(backend, str(path), tuple(opts.batch_sizes), size)
        row["files"] = {k: _rel(p, run_dir) for k, p in v.files.items()}  # plus what was exported/built here
        if "tensorrt" in runners:
            fn, shape = runners["tensorrt"]
            cells: dict[str, Any] = {}
            for bs in opts.batch_sizes:
                why = shape_mismatch(shape, bs, size) if shape is not None else None
                if why:
                    cells[f"b{bs}"] = {"skipped": why}
                    continue
                cells[f"b{bs}"] = _time_tensorrt(fn, size, bs, opts)
                if "median_ms" in cells[f"b{bs}"]:
                    log(f"  tensorrt batch {bs}: median {cells[f'b{bs}']['median_ms']:.2f} ms (GPU, CUDA events)")
            row["latency"]["tensorrt"] = cells
            row["backends"]["tensorrt"] = {"precision": "int8" if v.precision == "int8" else "fp16"}
        if opts.val and recipe is not None:
            eval_backend = "ort-int8" if v.precision == "int8" else "torch"
            if v.precision == "int8" and "ort-int8" not in runners:
                runners["ort-int8"] = _ort_runner(v.files["ort-int8"], opts.threads)
            fn = runners.get(eval_backend, (_torch_runner(model), None))[0]
            shape = runners.get(eval_backend, (None, None))[1]
            batch = 1 if shape is not None and isinstance(shape[0], int) else 8
            res = _evaluate(fn, batch, recipe, msize, int(getattr(model, "num_classes", 3)), opts, model=model)
            row["eval"], row["eval_backend"] = res, eval_backend
            key = map_key(res["metric"], opts.protocol)
            log(f"  {_metric_label(res['metric'], opts.protocol)} ({eval_backend}): {res[key]:.2f}")
            if "tensorrt" in runners:  # the engine's own accuracy (fp16 / INT8 kernels), same PostProcessor
                trt = runners["tensorrt"][0]
                tres = _evaluate(trt, min(8, trt.max_batch), recipe, msize, int(getattr(model, "num_classes", 3)),
                                 opts)
                row["eval_by_backend"] = {eval_backend: res, "tensorrt": tres}
                log(f"  {_metric_label(res['metric'], opts.protocol)} (tensorrt): {tres[key]:.2f}")
        rows.append(row)
        runners.clear()  # no idle session of this process may run threads while the children time
    gc.collect()
    _time_rows(rows, timing_jobs, opts, threads, log)
    _deltas(rows, opts.protocol)
    metric = next((r["eval"]["metric"] for r in rows if r.get("eval")), None) or \
        (resolve_metric(recipe.data, metric=opts.metric) if recipe is not None else "kitti")
    _speedups(rows)
    report = {"run_dir": str(run_dir), "threads": threads, "backends": list(opts.backends),
              "batch_sizes": list(opts.batch_sizes), "runs": opts.runs, "warmup": opts.warmup,
              "split": opts.split,
              "rounds": opts.rounds, "timer": "isolated_process", "timer_gpu": "cuda_events",
              "protocol": opts.protocol, "device": "cpu", "torch": torch.__version__,
              "metric": metric, "map_key": map_key(metric, opts.protocol), "ap_unit": "percent",
              "classes": list(recipe.data.classes) if recipe is not None else None,
              "rows": rows, "qat_vs_ptq": _qat_vs_ptq(rows, opts.protocol), "notes": notes,
              "skipped_backends": unavailable}
    if "tensorrt" in opts.backends and "tensorrt" not in unavailable:
        import tensorrt

        report.update(tensorrt=tensorrt.__version__, cuda_device=torch.cuda.get_device_name(0))
    with contextlib.suppress(ImportError):
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
    if any(b.startswith("openvino") for b in opts.backends):
        with contextlib.suppress(ImportError):
            import openvino

            report["openvino"] = openvino.__version__
    write_reports(report, out_dir)
    return json.loads(json.dumps(report, default=str))


def _rel(p: Path, run_dir: Path) -> str:
    p = Path(p)
    return str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p)


def _applies(v: Variant, backend: str) -> bool:
    """Whether a backend is a cell of this row: int8 rows run the int8 backends (and torch: a quantized
    stage's .pt2 program), fp32 rows the float ones."""
    if v.precision == "int8":
        return backend in ("ort-int8", "openvino-int8", "tensorrt") or (backend == "torch" and v.quant_stage)
    return backend not in ("ort-int8", "openvino-int8")


def _backend_file(v: Variant, backend: str, model: torch.nn.Module, out_dir: Path, opts: "BenchOptions",
                  size: tuple[int, int], msize: tuple[int, int], log: Callable[[str], None]) -> Path:
    """The file ``backend`` runs for row ``v``: the run's own (export stage or ``RUN/exports``), else one
    made here into the bench folder (fp32 ONNX exported from the model, OpenVINO IR converted from the
    row's ONNX).

    Raises:
        UserError: the row has no such file and none can be made (e.g. a quantized stage without .pt2).
    """
    dynamic = max(opts.batch_sizes) > 1 or size != msize
    if backend == "torch":
        if v.quant_stage:
            if "torch" not in v.files:
                raise UserError("the stage has no quantized .pt2 program")
            return v.files["torch"]
        return v.model_path
    if backend == "ort":
        v.files["ort"] = v.files.get("ort") or _ensure_onnx(v, model, out_dir, dynamic, log)
        return v.files["ort"]
    if backend == "ort-int8":
        return v.files["ort-int8"]
    from ..export._openvino import check_openvino, convert_to_ir

    check_openvino(f"the bench {backend} backend")
    key, src_key, suffix = (("openvino-int8", "ort-int8", ".int8.xml") if backend == "openvino-int8"
                            else ("openvino", "ort", ".xml"))
    if key not in v.files:
        if src_key not in v.files:
            v.files["ort"] = _ensure_onnx(v, model, out_dir, dynamic, log)
        p = out_dir / "openvino" / f"{v.stage}{suffix}"
        if not p.is_file():
            log(f"  {v.label}: no OpenVINO IR in the run; converting {v.files[src_key].name} -> {p}")
            convert_to_ir(v.files[src_key], p)
        v.files[key] = p
    return v.files[key]


def _agreement(ref: Any, out: Any, size: tuple[int, int], model: torch.nn.Module, opts: "BenchOptions") -> float:
    """Detection agreement (IoU 0.5, same label, top 20) of ``out`` with PyTorch's ``ref`` (raw outputs: the
    head, or a tuple), both decoded by the model's own postprocessor (detector contract)."""
    from ..export.runtime import detection_agreement, detection_decoder

    decode = detection_decoder(model, opts.postprocess, image_size=size)
    return detection_agreement(decode(ref), decode(out), iou=0.5)


def _time_rows(rows: list[dict[str, Any]], jobs: dict[tuple[int, str], TimingJob], opts: "BenchOptions",
               threads: int, log: Callable[[str], None]) -> None:
    """Fill the CPU latency cells: every (row, backend) timed in fresh processes of its own, alternating."""
    if not jobs:
        return
    names = {f"{i}:{b}": (i, b) for (i, b) in jobs}
    log(f"timing {len(jobs)} model/backend pairs, each in its own process ({opts.rounds} rounds, {threads} threads)")
    res = time_isolated({n: jobs[k] for n, k in names.items()}, runs=opts.runs, rounds=opts.rounds, threads=threads,
                        warmup=opts.warmup)
    for n, (i, backend) in names.items():
        r = res[n]
        cells = {k: v for k, v in r.items() if k.startswith("b") and k[1:].isdigit()}
        rows[i]["latency"][backend] = cells
        rows[i]["backends"].setdefault(backend, {})["precision"] = r["precision"]
        for bs, c in cells.items():
            if "median_ms" in c:
                log(f"  {rows[i]['label']}: {backend} batch {bs[1:]}: median {c['median_ms']:.2f} ms, "
                    f"p90 {c['p90_ms']:.2f} ms ({r['precision']}, own process)")


def _root(row: dict[str, Any], fp32: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The fp32 baseline of a row: the first fp32 row up its chain of 'from' stages."""
    name = row["stage"] if row["precision"] == "fp32" else (row.get("float_source") or row["stage"])
    seen: set[str] = set()
    while name in fp32 and fp32[name].get("from") in fp32 and name not in seen:
        seen.add(name)
        name = fp32[name]["from"]
    return fp32.get(name)


def _speedups(rows: list[dict[str, Any]]) -> None:
    """Per row: ``fastest_backend`` (batch 1) and, per backend, the speed-up against the fp32 baseline model
    (the root of its 'from' chain) on the same backend (an int8 backend against its float one)."""
    from .backends import float_counterpart

    fp32 = {r["stage"]: r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        r["fastest_backend"] = best_latency(r)[0]
        base = _root(r, fp32)
        r["baseline"] = base["label"] if base else None
        sp = {}
        for b in r["latency"]:
            lat = _backend_latency(r, b)
            ref = _backend_latency(base, float_counterpart(b)) if base else None
            if lat and ref:
                sp[b] = {"vs": base["label"], "vs_backend": float_counterpart(b), "speedup": round(ref / lat, 3)}
        r["speedup_vs_baseline"] = sp


def best_latency(row: dict[str, Any], batch: int = 1) -> tuple[str | None, float | None]:
    """(backend, median ms) of the row's fastest measured backend at ``batch``."""
    best: tuple[str | None, float | None] = (None, None)
    for b, cells in row["latency"].items():
        c = cells.get(f"b{batch}") if isinstance(cells, dict) else None
        if c and "median_ms" in c and (best[1] is None or c["median_ms"] < best[1]):
            best = (b, c["median_ms"])
    return best


def map_key(metric: str | None, protocol: str) -> str:
    """The result key a row's mAP is read from: KITTI ``map40`` (``map11`` with the seed protocol), COCO ``ap``."""
    if metric == "coco":
        return "ap"
    return "map11" if protocol == "seed" else "map40"


def _metric_label(metric: str, protocol: str) -> str:
    return "COCO AP@[.5:.95] (%)" if metric == "coco" else f"mAP ({protocol}, %)"


def row_map(row: dict[str, Any], protocol: str) -> float | None:
    if not row.get("eval"):
        return None
    v = row["eval"].get(map_key(row["eval"].get("metric"), protocol))
    return None if v is None else float(v)


def _pct(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(100.0 * (a - b) / b, 2)


def _deltas(rows: list[dict[str, Any]], protocol: str) -> None:
    """Each row vs its reference: an int8 row vs its own stage's fp32 row, else vs its 'from' stage."""
    fp32 = {r["stage"]: r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        own = r["precision"] == "int8" and not r.get("float_source")  # PTQ of a float stage's own model
        ref = fp32.get(r["stage"]) if own else fp32.get(r["from"] or "")
        if ref is None or ref is r:
            r["delta"] = None
            continue
        m, mr = row_map(r, protocol), row_map(ref, protocol)
        # speed on one backend: the row's fastest vs the reference on that backend (an int8 backend: its
        # float one), so a backend change is not read as a model's speed-up; best vs best only as a fallback
        from .backends import float_counterpart

        b, lat = best_latency(r)
        vs_b = float_counterpart(b) if b else None
        latr = _backend_latency(ref, vs_b) if vs_b else None
        if latr is None:
            vs_b, latr = best_latency(ref)
        r["delta"] = {"vs": ref["label"],
                      "map": None if m is None or mr is None else round(m - mr, 2),
                      "macs_backbone_pct": _pct(r["macs"]["backbone"], ref["macs"]["backbone"]),
                      "params_pct": _pct(r["params"]["total"], ref["params"]["total"]),
                      "latency_pct": _pct(lat, latr),
                      "speedup": None if not lat or not latr else round(latr / lat, 2),
                      "speedup_backends": None if not lat or not latr else f"{b} vs {vs_b}",
                      "file_bytes_pct": _pct(r["file_bytes"], ref["file_bytes"]),
                      "param_bytes_pct": _pct(r.get("param_bytes"), ref.get("param_bytes"))}


def _backend_latency(row: dict[str, Any], backend: str, batch: int = 1) -> float | None:
    c = (row["latency"].get(backend) or {}).get(f"b{batch}") or {}
    return c.get("median_ms")


def _qat_vs_ptq(rows: list[dict[str, Any]], protocol: str) -> dict[str, Any] | None:
    """mAP/latency of the QAT INT8 row vs a PTQ INT8 row, when the run has both.

    The PTQ row preferred is a ``ptq`` stage quantized from the same float source, then any ``ptq``
    stage, then an ONNX Runtime PTQ of a float stage. Latency is compared on ``ort-int8`` (batch 1).
    """
    int8 = [r for r in rows if r["precision"] == "int8"]
    qat = [r for r in int8 if r["kind"] == "qat" and not str(r.get("quantization") or "").startswith("ptq")]
    ptq = [r for r in int8 if r["kind"] == "ptq" or str(r.get("quantization") or "").startswith("ptq")]
    if not qat or not ptq:
        return None
    q = qat[0]
    ptq.sort(key=lambda r: (not (r["kind"] == "ptq" and r.get("from") == q.get("from")), r["kind"] != "ptq"))
    p = ptq[0]
    mq, mp = row_map(q, protocol), row_map(p, protocol)
    lq, lp = _backend_latency(q, "ort-int8"), _backend_latency(p, "ort-int8")
    if lq is None or lp is None:
        lq, lp = best_latency(q)[1], best_latency(p)[1]
    return {"qat": q["label"], "ptq": p["label"], "map_qat": mq, "map_ptq": mp,
            "map_gain": None if mq is None or mp is None else round(mq - mp, 2),
            "latency_qat_ms": lq, "latency_ptq_ms": lp, "latency_backend": "ort-int8",
            "same_float_source": q.get("from") == p.get("from"), "from_qat": q.get("from"), "from_ptq": p.get("from")}
