"""Export a run's model (or a model file) to the formats of :mod:`compressdet.export.formats`.

One :class:`Exporter` prepares the model once (deep copy, eval), then runs one ``export_<fmt>``
function per requested format behind :meth:`Exporter._report`, which logs time, path and size.
Metadata (classes, anchors, mean, input size, stage, source sha256, version) goes into every ONNX.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._io import sha256_file
from ..conventions import MEAN_BGR, default_classes
from ..errors import ArtifactError, UserError
from .formats import FORMATS, get_format, validate_options

__all__ = ["ExportSource", "QuantSource", "resolve_source", "model_stages", "exportable_stages", "quant_source",
           "calibration_images", "Exporter", "export_model"]


@dataclass
class QuantSource:
    """A quantized (qat/ptq) stage: its own int8 files; the fp32 side comes from its float source."""

    stage: str
    kind: str
    artifacts: dict[str, Path]  # quantized (.pt2), onnx_int8, report (absolute)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportSource:
    """A model to export and where it came from.

    For a quantized stage, ``model``/``model_path``/``stage`` are its float source (the stage it was
    quantized from: the fp32 graph, metadata) and ``quant`` the quantized stage itself (whose own
    verified ``onnx_int8`` is the int8 export).
    """

    model: nn.Module
    model_path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    stage_kind: str | None = None
    run_dir: Path | None = None
    recipe: Any = None  # compressdet.recipe.Recipe when the run's recipe.yaml is readable
    artifacts: dict[str, Path] = field(default_factory=dict)  # the stage's own artifacts (absolute)
    quant: QuantSource | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in getattr(self.model, "image_size", self.meta.get("image_size", (384, 1248))))

    @property
    def classes(self) -> list[str]:
        if self.recipe is not None:
            return list(self.recipe.data.classes)
        n = int(getattr(self.model, "num_classes", 3))
        return list(self.meta.get("classes") or default_classes(n))

    @property
    def name(self) -> str:
        return self.stage or self.model_path.stem

    @property
    def selected(self) -> str:
        """The stage asked for: the quantized stage when there is one, else the model's stage."""
        return self.quant.stage if self.quant else self.name

    def stem(self, fmt: str) -> str:
        """File stem of a format: int8 outputs of a quantized stage carry its name, the rest the model's."""
        if self.quant is not None and fmt in ("onnx-int8", "tensorrt-int8", "openvino-int8"):
            return self.quant.stage
        return self.name


def model_stages(run_dir: Path) -> list[str]:
    """Done stages of a run that hold a ``model`` artifact, in recipe order."""
    from ..rundir import load_manifest

    stages = load_manifest(run_dir)["stages"]
    return [n for n, r in stages.items() if r.get("status") == "done" and "model" in r.get("artifacts", {})]


def exportable_stages(run_dir: Path) -> list[str]:
    """Done stages with a ``model`` or an ``onnx_int8`` of their own (qat/ptq), in recipe order."""
    from ..rundir import load_manifest
    from .quantized import is_model_stage, is_quant_stage

    stages = load_manifest(run_dir)["stages"]
    return [n for n, r in stages.items() if r.get("status") == "done" and (is_model_stage(r) or is_quant_stage(r))]


def quant_source(run_dir: Path, stage: str, *, stages: dict[str, Any] | None = None,
                 artifacts: dict[str, Path] | None = None) -> tuple[QuantSource, str]:
    """The quantized stage ``stage`` and the name of its float source stage (from the run manifest).

    Raises:
        UserError: the float source is missing or unfinished.
    """
    from ..rundir import load_manifest
    from .quantized import float_source

    stages = stages if stages is not None else load_manifest(run_dir)["stages"]
    rec = stages[stage]
    arts = artifacts if artifacts is not None else {k: run_dir / a["path"]
                                                    for k, a in rec.get("artifacts", {}).items()}
    q = QuantSource(stage=stage, kind=rec.get("kind", "?"), artifacts=dict(arts), meta=dict(rec.get("meta") or {}))
    return q, float_source(stages, stage)


def _load_recipe(run_dir: Path) -> Any:
    from ..recipe import load_recipe

    p = run_dir / "recipe.yaml"
    return load_recipe(p) if p.is_file() else None


def resolve_source(path: str | Path | None, stage: str | None = None, *, runs_root: str | Path = "runs",
                   log: Callable[[str], None] = print) -> ExportSource:
    """A run directory (its ``stage``, default the last model stage), a model file, or the latest run.

    Raises:
        UserError: nothing found, unknown stage, or a ``--stage`` given with a model file.
    """
    from ..models import load_model
    from ..rundir import latest_run_or_fail, load_manifest

    if path is None:
        path = latest_run_or_fail(runs_root, "pass RUN_DIR or MODEL_FILE", log)
    path = Path(path)
    if path.is_file():
        if stage:
            raise UserError(f"--stage {stage}: only valid with a run directory, {path} is a model file")
        model, meta = load_model(path)
        return ExportSource(model=model, model_path=path, meta=meta)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory or model file")
    from .quantized import is_quant_stage

    manifest = load_manifest(path)
    names = exportable_stages(path)
    if not names:
        raise UserError(f"{path}: no finished stage with a model artifact (or an INT8 graph) yet")
    if stage is None:
        stage = names[-1]
        log(f"using stage '{stage}' ({manifest['stages'][stage].get('kind')}; the last stage with a model or an "
            f"INT8 graph; pick another with --stage: {', '.join(names)})")
    elif stage not in names:
        raise UserError(f"{path}: stage '{stage}' has no finished model (stages with a model or an INT8 graph: "
                        f"{', '.join(names)})")
    quant = None
    if is_quant_stage(manifest["stages"][stage]):
        quant, float_stage = quant_source(path, stage, stages=manifest["stages"])
        log(f"stage '{stage}' is a {quant.kind} stage: fp32 ONNX comes from its float source '{float_stage}' "
            f"(the stage it was quantized from); INT8 ONNX is '{stage}''s own verified QDQ graph")
        stage = float_stage
    rec = manifest["stages"][stage]
    arts = {k: path / a["path"] for k, a in rec.get("artifacts", {}).items()}
    model, meta = load_model(arts["model"])
    return ExportSource(model=model, model_path=arts["model"], meta=meta, stage=stage, stage_kind=rec.get("kind"),
                        run_dir=path, recipe=_load_recipe(path), artifacts=arts, quant=quant)


def calibration_images(source: ExportSource, n: int, *, split: str = "train",
                       log: Callable[[str], None] = print) -> list[torch.Tensor]:
    """Up to ``n`` model-ready images ``[1, 3, H, W]`` from the run's data, else synthetic ones.

    Synthetic images keep the command usable on a bare model file; INT8 ranges calibrated on them
    are only a smoke test, and the log says so.
    """
    from ._onnx import synthetic_image

    if source.recipe is not None:
        try:
            from ..data import build_dataset

            cfg = source.recipe.data.model_copy(update={"image_size": source.image_size})
            ds = build_dataset(cfg, split, train=False)
            step = max(1, len(ds) // n)
            return [ds[i][0][None].float() for i in range(0, len(ds), step)][:n]
        except UserError as e:
            log(f"  warning: run data unavailable ({e}); using synthetic images")
    else:
        log("  note: no run data (a bare model file): using synthetic images")
    return [synthetic_image(source.image_size, seed=i) for i in range(n)]


def _metadata(source: ExportSource, precision: str) -> dict[str, Any]:
    # the family's own keys (detector contract: ShuffleDet's anchors_shape/anchor_order/head_layout,
    # the FPN families' priors and levels)
    family = source.model.export_metadata() if hasattr(source.model, "export_metadata") else {}
    return {"classes": source.classes, **family, "mean_bgr": list(MEAN_BGR),
            "input_size": f"{source.image_size[0]}x{source.image_size[1]}", "stage": source.name,
            "source_file": source.model_path.name, "source_sha256": sha256_file(source.model_path),
            "compressdet_version": __version__, "precision": precision,
            "arch": getattr(source.model, "arch", {})}


class Exporter:
    """Runs the requested formats for one source; each output is verified before it is kept.

    Args:
        source: what to export.
        out_dir: where files go (named ``<stage><suffix>``).
        options: export options (validated against each format's row of the format table).
    """

    def __init__(self, source: ExportSource, out_dir: str | Path, *, opset: int = 18, dynamic_batch: bool = False,
                 with_postprocess: bool = False, tolerance: float = 1e-3, calibration_images: int = 16,
                 postprocess: dict[str, Any] | None = None, log: Callable[[str], None] = print):
        self.source, self.out_dir, self.log = source, Path(out_dir), log
        self.opset, self.dynamic_batch, self.with_postprocess = opset, dynamic_batch, with_postprocess
        self.tolerance, self.n_calib = tolerance, calibration_images
        self.postprocess = dict(postprocess or {})
        self.model = source.model.eval()
        self.results: dict[str, dict[str, Any]] = {}
        self.trt_int8 = False  # set by run(): the INT8 graph must suit a TensorRT engine too
        self._decoder: Callable[[Any], dict[str, Any]] | None = None  # built on first use (_decode)

    # ---------------------------------------------------------------------------------------------
    def run(self, formats: list[str]) -> dict[str, dict[str, Any]]:
        """Export ``formats`` (plus what they require, e.g. onnx before onnx-int8), in table order."""
        wanted: list[str] = []
        for name in formats:
            f = get_format(name)
            for req in f.requires:
                if req not in wanted:
                    wanted.append(req)
            if name not in wanted:
                wanted.append(name)
        for name in wanted:  # the opset goes to the formats that build a graph (not the Ultralytics checkpoint)
            opts = {"opset": self.opset if "opset" in get_format(name).options else None,
                    "dynamic_batch": self.dynamic_batch,
                    "with_postprocess": self.with_postprocess and name == "onnx"}
            validate_options(name, opts)
        # a TensorRT INT8 engine needs symmetric int8 activations: quantize for it when it is wanted
        self.trt_int8 = "tensorrt" in wanted and "onnx-int8" in wanted
        order = [n for n in FORMATS if n in wanted]
        for name in order:
            self._report(name, getattr(self, "export_" + name.replace("-", "_")))
        return self.results

    def _report(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> None:
        f = FORMATS[name]
        stem = self.source.stem(name)
        path = self.out_dir / f"{stem}{f.suffix}"
        what = stem
        if self.source.quant is not None:
            what = (f"{stem} (fp32 float source of {self.source.quant.kind} stage '{self.source.quant.stage}')"
                    if stem != self.source.quant.stage else f"{stem} ({self.source.quant.kind}, own INT8 graph)")
        self.log(f"[{name}] exporting {what} -> {path}")
        t0 = time.perf_counter()
        info = fn(path)
        dt = time.perf_counter() - t0
        size = Path(info["path"]).stat().st_size + (Path(info["bin"]).stat().st_size if info.get("bin") else 0)
        info.update(seconds=round(dt, 2), bytes=size, format=name, artifact=f.artifact)
        self.results[name] = info
        self.log(f"[{name}] done in {dt:.1f}s: {info['path']} ({size / 1e6:.2f} MB)")

    def _sample(self) -> torch.Tensor:
        return calibration_images(self.source, 1, split="val", log=self.log)[0]

    # ---------------------------------------------------------------------------------------------
    def export_onnx(self, path: Path) -> dict[str, Any]:
        from ._onnx import export_onnx

        anchors = None
        check = None
        graph_fn = None
        family = getattr(self.model, "family", "shuffledet")
        if self.with_postprocess and family != "shuffledet":
            if not hasattr(self.model, "detection_graph"):
                raise UserError(f"--with-postprocess (in-graph decode): a {family} model has no detection_graph; its "
                                f"graph ends in the raw outputs {', '.join(self.model.export_outputs)}")
            model, cfg = self.model, self.postprocess

            def graph_fn(net):  # the family's own traceable decode + NMS around the (rewritten) network
                return model.detection_graph(cfg, net)

            check = self._check_against_postprocessor
        elif self.with_postprocess:
            from ..models.anchors import generate_anchors

            anchors = generate_anchors(self.source.image_size)
            check = self._check_against_postprocessor
        meta = _metadata(self.source, "fp32")
        meta["postprocess"] = self.postprocess if self.with_postprocess else None
        return export_onnx(self.model, path, image_size=self.source.image_size, opset=self.opset,
                           dynamic_batch=self.dynamic_batch, with_postprocess=self.with_postprocess, anchors=anchors,
                           postprocess=self.postprocess, num_classes=int(getattr(self.model, "num_classes", 3)),
                           num_anchors=int(getattr(self.model, "num_anchors", 9)), metadata=meta,
                           tolerance=self.tolerance, sample=self._sample(), check_detections=check, log=self.log,
                           graph_fn=graph_fn)

    def _check_against_postprocessor(self, ort_out: list[np.ndarray], x: torch.Tensor) -> dict[str, Any]:
        """The in-graph decode must give the family's postprocessor's detections (same count, labels, boxes)."""
        from ..models.postprocess import PostProcessor
        from ._onnx import ExportVerificationError, matched_detection_diffs
        from .runtime import detection_agreement

        with torch.no_grad():
            if getattr(self.model, "family", "shuffledet") != "shuffledet":
                ref = self.model.postprocessor(self.postprocess)(self.model(x))[0]
            else:
                ref = PostProcessor(self.source.image_size, num_classes=int(getattr(self.model, "num_classes", 3)),
                                    **self.postprocess)(self.model(x))[0]
        ort = {"boxes": ort_out[0], "scores": ort_out[1], "labels": ort_out[2]}
        agree = detection_agreement(ref, ort, iou=0.99)
        # paired detection by detection (near-tied scores may swap places; degenerate boxes have no IoU)
        matched = matched_detection_diffs(ort_out, (ref["boxes"], ref["scores"], ref["labels"]), self.tolerance)
        ok = len(ort_out[0]) == len(ref["boxes"]) and matched["boxes"] <= self.tolerance
        diff = matched["scores"] if ok else float("inf")
        self.log(f"  in-graph post-processing vs PostProcessor: {len(ort_out[0])} vs {len(ref['boxes'])} "
                 f"detections, agreement {agree:.3f}, max |score diff| {diff:.3g}")
        if not ok or diff > self.tolerance:
            raise ExportVerificationError(f"in-graph post-processing disagrees with PostProcessor "
                                          f"({len(ort_out[0])} vs {len(ref['boxes'])} detections, agreement {agree:.3f})")
        return {"postprocess_agreement": agree, "detections": int(len(ort_out[0]))}

    def export_onnx_int8(self, path: Path) -> dict[str, Any]:
        from ._int8 import copy_onnx_int8, quantize_onnx_int8, verify_int8

        fp32 = Path(self.results["onnx"]["path"])
        if self.source.quant is not None:
            return self._export_quant_int8(path, fp32)
        own = self.source.artifacts.get("onnx_int8")
        if own is not None and own.is_file():
            self.log(f"  using stage '{self.source.name}''s own INT8 graph {own}")
            copy_onnx_int8(own, path)
            how = f"copied from stage '{self.source.name}' ({self.source.stage_kind})"
        else:
            if "quantized" in self.source.artifacts:
                self.log("  note: the stage's quantized .pt2 program is not exported directly; "
                         "its float weights get static PTQ in ONNX Runtime")
            imgs = calibration_images(self.source, self.n_calib, split="train", log=self.log)
            sym = self.trt_int8
            acts = "symmetric s8 activations (for TensorRT)" if sym else "u8 activations"
            self.log(f"  static PTQ (QDQ, per-channel s8 weights, {acts}) on {len(imgs)} images")
            quantize_onnx_int8(fp32, path, [i.numpy() for i in imgs], symmetric=sym)
            how = f"ptq-minmax onnxruntime ({len(imgs)} calibration images{', symmetric' if sym else ''})"
        check = calibration_images(self.source, 2, split="val", log=lambda s: None)
        info = verify_int8(path, fp32, [c.numpy() for c in check], decode=self._decode, agreement=self._agree)
        self.log(f"  INT8 vs fp32 in ORT: max |diff| {info['max_abs_diff_vs_fp32']:.3g}, detection agreement "
                 f"{info.get('detection_agreement', float('nan')):.3f}, QDQ nodes {info['qdq_nodes']}")
        return {"path": str(path), "source": how, **info}

    def _export_quant_int8(self, path: Path, fp32: Path) -> dict[str, Any]:
        """A qat/ptq stage's own QDQ graph: copied with metadata, re-verified, never re-quantized.

        Checks: same graph (sha256 of the graph, metadata aside) as the stage's ``onnx_int8``, the
        QDQ graph rules (``check_int8_graph``), finite ORT outputs; ORT vs the stage's ``quantized``
        .pt2 program (max |diff|, detection agreement) and vs the float source's fp32 graph.
        """
        from .._io import sha256_file as _sha
        from ..quant.onnx_int8 import check_int8_graph
        from ._int8 import copy_onnx_int8_with_metadata, verify_int8
        from .quantized import graph_sha256, load_quantized_program, quantization_label
        from .runtime import ort_run, ort_session, outputs_max_abs_diff, raw_outputs

        q = self.source.quant
        own = q.artifacts.get("onnx_int8")
        if own is None or not Path(own).is_file():
            raise UserError(f"stage '{q.stage}' ({q.kind}): its onnx_int8 artifact is missing ({own})")
        own = Path(own)
        self.log(f"  using {q.kind} stage '{q.stage}''s own INT8 graph {own} (no fresh PTQ of '{self.source.name}')")
        gsha = graph_sha256(own)
        meta = _metadata(self.source, "int8")
        meta.update(stage=q.stage, stage_kind=q.kind, float_source_stage=self.source.name,
                    quantization=quantization_label(q.kind, q.meta), graph_sha256=gsha, source_onnx_int8=own.name,
                    source_onnx_int8_sha256=_sha(own), exporter="compressdet.quant (PT2E program -> QDQ ONNX)")
        pt2 = q.artifacts.get("quantized")
        if pt2 is not None and Path(pt2).is_file():
            meta["quantized_sha256"] = _sha(pt2)
        copy_onnx_int8_with_metadata(own, path, meta)
        try:
            if graph_sha256(path) != gsha:
                raise UserError(f"{path}: copied INT8 graph differs from stage '{q.stage}''s {own}")
            graph = check_int8_graph(path)
            check = calibration_images(self.source, 2, split="val", log=lambda s: None)
            info = verify_int8(path, fp32, [c.numpy() for c in check], decode=self._decode, agreement=self._agree)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        info.update(graph=graph, graph_sha256=gsha, quantization=meta["quantization"], stage=q.stage,
                    stage_kind=q.kind, float_source=self.source.name)
        if pt2 is not None and Path(pt2).is_file():
            try:
                prog = load_quantized_program(pt2)
                sess = ort_session(path)
                diffs, agree = [], []
                for c in check:
                    with torch.no_grad():
                        ref = raw_outputs(prog(c))  # the head, or every raw output of an FPN family
                    o = raw_outputs(ort_run(sess, c.numpy()))
                    diffs.append(outputs_max_abs_diff(o, ref))
                    agree.append(self._agree(self._decode(ref), self._decode(o)))
                info["max_abs_diff_vs_quantized"] = float(max(diffs))
                info["detection_agreement_vs_quantized"] = float(np.mean(agree))
                self.log(f"  ORT INT8 vs the stage's quantized program: max |diff| {max(diffs):.3g}, detection "
                         f"agreement {np.mean(agree):.3f}")
            except Exception as e:  # noqa: BLE001 - the .pt2 check is extra; the ORT checks above passed
                info["quantized_check"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                self.log(f"  note: could not run the stage's quantized .pt2 ({info['quantized_check']})")
        self.log(f"  INT8 ({q.kind}) vs fp32 '{self.source.name}' in ORT: max |diff| "
                 f"{info['max_abs_diff_vs_fp32']:.3g}, detection agreement "
                 f"{info.get('detection_agreement', float('nan')):.3f}, QDQ nodes {info['qdq_nodes']}")
        return {"path": str(path), "source": f"copied from {q.kind} stage '{q.stage}' (same graph, sha256 "
                f"{gsha[:12]}...)", **info}

    def _decode(self, outputs: Any) -> dict[str, Any]:
        """Top-20 detections of image 0 of raw outputs (one array or a tuple), by the model's own
        ``postprocessor`` (detector contract), for the agreement checks of every family."""
        if self._decoder is None:
            from .runtime import detection_decoder

            self._decoder = detection_decoder(self.model, self.postprocess, image_size=self.source.image_size)
        return self._decoder(outputs)

    @staticmethod
    def _agree(a: dict, b: dict) -> float:
        from .runtime import detection_agreement

        return detection_agreement(a, b, iou=0.5)

    def export_openvino(self, path: Path) -> dict[str, Any]:
        """IR of the fp32 ONNX; OpenVINO at exact fp32 must match PyTorch within the tolerance (else no file).

        Also recorded: the default-precision run (bf16 on CPUs that have it) vs PyTorch, and what
        precision that really was.
        """
        from ._onnx import ExportVerificationError
        from ._openvino import convert_to_ir, ir_bin_path

        info = convert_to_ir(self.results["onnx"]["path"], path)
        try:
            check = self._verify_openvino(path, int8=False)
            if not check["max_abs_diff"] <= self.tolerance:
                raise ExportVerificationError(
                    f"{path}: OpenVINO (f32) output differs from PyTorch by {check['max_abs_diff']:.3g} > tolerance "
                    f"{self.tolerance:g}; no file written")
        except Exception:
            path.unlink(missing_ok=True)
            ir_bin_path(path).unlink(missing_ok=True)
            raise
        return {**info, "source": f"converted from {Path(self.results['onnx']['path']).name}", **check}

    def export_openvino_int8(self, path: Path) -> dict[str, Any]:
        """IR of the INT8 QDQ graph (the stage's own, as ``onnx-int8`` exported it): OpenVINO runs its
        Q/DQ pairs as int8 kernels. Checked: finite outputs; max |diff| and detection agreement vs
        PyTorch fp32 and vs ONNX Runtime on the same QDQ graph (recorded, no threshold: int8 is not fp32)."""
        from ._onnx import ExportVerificationError
        from ._openvino import convert_to_ir, ir_bin_path

        src = self.results["onnx-int8"]["path"]
        info = convert_to_ir(src, path)
        try:
            check = self._verify_openvino(path, int8=True, ort_int8=Path(src))
            if not np.isfinite(check["max_abs_diff"]):
                raise ExportVerificationError(f"{path}: OpenVINO INT8 output is not finite; no file written")
        except Exception:
            path.unlink(missing_ok=True)
            ir_bin_path(path).unlink(missing_ok=True)
            raise
        return {**info, "source": f"converted from {Path(src).name} (QDQ: int8 as trained)", **check}

    def _verify_openvino(self, xml: Path, *, int8: bool, ort_int8: Path | None = None) -> dict[str, Any]:
        """OpenVINO (exact f32 hint, and its default precision) vs PyTorch fp32 on two images."""
        from ._openvino import OpenVINORunner
        from .runtime import ort_run, ort_session, outputs_max_abs_diff, raw_outputs

        check = calibration_images(self.source, 2, split="val", log=lambda s: None)
        exact = OpenVINORunner(xml, precision="f32", int8=int8)
        default = OpenVINORunner(xml, int8=int8)
        sess = ort_session(ort_int8) if ort_int8 is not None else None
        diffs, ddiffs, agree, odiffs = [], [], [], []
        for c in check:
            with torch.no_grad():
                ref = raw_outputs(self.model(c))
            o = exact(c.numpy())
            diffs.append(outputs_max_abs_diff(o, ref))
            ddiffs.append(outputs_max_abs_diff(default(c.numpy()), ref))
            agree.append(self._agree(self._decode(ref), self._decode(o)))
            if sess is not None:
                odiffs.append(outputs_max_abs_diff(o, ort_run(sess, c.numpy())))
        out = {"max_abs_diff": float(max(diffs)), "detection_agreement": float(np.mean(agree)),
               "precision": exact.precision, "default_precision": default.inference_precision,
               "max_abs_diff_default_precision": float(max(ddiffs)), "vs": "pytorch fp32"}
        if odiffs:
            out["max_abs_diff_vs_ort_int8"] = float(max(odiffs))
        self.log(f"  OpenVINO ({'int8, ' if int8 else ''}f32 hint) vs PyTorch fp32: max |diff| {out['max_abs_diff']:.3g}, "
                 f"detection agreement {out['detection_agreement']:.3f}; default precision "
                 f"({default.inference_precision}): max |diff| {out['max_abs_diff_default_precision']:.3g}"
                 + (f"; vs ORT int8: max |diff| {out['max_abs_diff_vs_ort_int8']:.3g}" if odiffs else ""))
        return out

    def export_ultralytics(self, path: Path) -> dict[str, Any]:
        """The yolo model as an Ultralytics checkpoint (``YOLO(path)``); kept only when the checkpoint's network,
        read back through Ultralytics' own safe loader, gives the model's raw outputs on a sample image."""
        import os

        from ..models.yolo import YoloDetector, load_ultralytics_checkpoint, save_ultralytics

        _require_yolo(self.model)
        tmp = path.with_name(f".{path.stem}.tmp.pt")  # Ultralytics reads only .pt files
        try:
            save_ultralytics(self.model, tmp, classes=self.source.classes)
            back = YoloDetector(load_ultralytics_checkpoint(tmp, f"export '{path.name}'"),
                                image_size=self.source.image_size, arch=self.model.arch).eval()
            x = self._sample()
            with torch.no_grad():
                diff = max(float((a - b).abs().max()) for a, b in zip(self.model(x), back(x)))
            if not diff <= self.tolerance:
                raise ArtifactError(f"{path}: the Ultralytics checkpoint's outputs differ from the model's by {diff:.3g}"
                                    f" (> --tolerance {self.tolerance}); not written")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.log(f"  reloaded through Ultralytics' loader: max |diff| {diff:.3g}; load it with "
                 f"ultralytics.YOLO('{path}')")
        return {"path": str(path), "max_abs_diff": diff}

    def export_tensorrt(self, path: Path) -> dict[str, Any]:
        from ..errors import ArtifactError
        from ..quant.onnx_int8 import check_int8_graph
        from ._tensorrt import build_engine

        src = self.results.get("onnx-int8") or self.results["onnx"]
        int8, note = "onnx-int8" in self.results, None
        if int8:
            try:
                check_int8_graph(src["path"], tensorrt=True)
            except ArtifactError as e:  # u8 graph (ORT's fast flavour): TensorRT's parser would abort
                note = str(e)  # names the graph, the node and the fix
                self.log(f"  note: no TensorRT INT8 engine: {note}; building the engine from the fp32 graph instead")
                src, int8 = self.results["onnx"], False
        if int8:
            path = path.with_name(f"{self.source.stem('tensorrt-int8')}.int8.engine")
        info = build_engine(src["path"], path, int8=int8, dynamic_batch=self.dynamic_batch)
        return {**info, "int8_skipped": note} if note else info


def _require_yolo(model: Any) -> None:
    family = getattr(model, "family", "shuffledet")
    if family != "yolo":
        raise UserError(f"format 'ultralytics' is for yolo models (yolov8n/s, yolo11n/s); this is a {family} model "
                        f"({getattr(model, 'arch', {}).get('name', type(model).__name__)})")


def export_model(path: str | Path | None, formats: list[str], *, stage: str | None = None,
                 out_dir: str | Path | None = None, runs_root: str | Path = "runs",
                 log: Callable[[str], None] = print, **options: Any) -> tuple[ExportSource, dict[str, dict[str, Any]]]:
    """Resolve the source, export ``formats`` and write ``export.json`` next to the files.

    Returns:
        ``(source, {format: info})``.
    """
    from .._io import atomic_write_json

    if "tensorrt" in formats:  # fail before any work when the backend is absent
        from ._tensorrt import check_tensorrt

        check_tensorrt()
    if any(f.startswith("openvino") for f in formats):
        from ._openvino import check_openvino

        check_openvino("OpenVINO export")
    source = resolve_source(path, stage, runs_root=runs_root, log=log)
    if "ultralytics" in formats:  # before any file is written
        _require_yolo(source.model)
    if out_dir is None:
        out_dir = (source.run_dir / "exports") if source.run_dir else source.model_path.parent
    if source.recipe is not None and "postprocess" not in options:
        stage_cfg = _stage_cfg(source)
        pp = getattr(stage_cfg, "postprocess", None)
        if pp is not None:
            options["postprocess"] = pp.model_dump()
    exporter = Exporter(source, out_dir, log=log, **options)
    results = exporter.run(formats)
    index = Path(out_dir) / f"{source.selected}.export.json"
    q = source.quant
    atomic_write_json(index, {"stage": source.selected, "kind": q.kind if q else source.stage_kind,
                              "float_source": source.stage if q else None,
                              "run_dir": str(source.run_dir) if source.run_dir else None,
                              "model": str(source.model_path), "model_sha256": sha256_file(source.model_path),
                              "formats": results})
    return source, results


def _stage_cfg(source: ExportSource) -> Any:
    try:
        name = source.selected if source.stage else None
        return source.recipe.stage(name) if name else None
    except KeyError:
        return None
