"""Predictor: a model on one backend plus the evaluation's transform and decode; sources and writers."""

from __future__ import annotations

import difflib
import glob
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..conventions import KITTI_CLASSES, default_classes
from ..errors import DataError, MissingDependencyError, UserError

__all__ = ["PREDICT_BACKENDS", "ResolvedModel", "PredictOptions", "Predictor", "resolve_model", "iter_sources",
           "split_sources", "split_coco_gt", "write_split_ground_truth", "CocoTarget", "default_classes",
           "predict", "draw_threshold", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]

PREDICT_BACKENDS = ("torch", "ort", "ort-int8", "openvino", "openvino-f32", "openvino-int8", "tensorrt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

#: which backends run which kind of model file
_BY_SUFFIX = {".pt": ("torch",), ".onnx": ("ort", "ort-int8", "openvino", "openvino-int8"),
              ".xml": ("openvino", "openvino-f32", "openvino-int8"), ".engine": ("tensorrt",)}


@dataclass
class ResolvedModel:
    """What to run and with which settings (the run's, when the model came from a run).

    Attributes:
        path: the file the backend opens.
        backend: a :data:`PREDICT_BACKENDS` name.
        image_size: model input (H, W).
        classes: training class names (index = label).
        postprocess: PostProcessor keyword arguments (the run's stage config, else the defaults).
        description: one line for the log.
        run_dir: the run the model came from (``split:NAME`` sources read its data), else None.
        arch: the model's ``arch`` dict (from the model file or the graph's metadata): its family's
            own postprocessor decodes the raw outputs; None (an old graph) means ShuffleDet's head.
    """

    path: Path
    backend: str
    image_size: tuple[int, int]
    classes: list[str]
    postprocess: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    run_dir: Path | None = None
    arch: dict[str, Any] | None = None


def check_backend(name: str) -> str:
    """Raises UserError for an unknown backend name, with the close match and the valid list."""
    if name not in PREDICT_BACKENDS:
        close = difflib.get_close_matches(name, PREDICT_BACKENDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown backend '{name}'{hint}; backends: {', '.join(PREDICT_BACKENDS)}")
    return name


def _postprocess_defaults() -> dict[str, Any]:
    from ..recipe import PostprocessConfig

    return PostprocessConfig().model_dump()


def _from_run(run_dir: Path, backend: str | None, stage: str | None, log: Callable[[str], None]) -> ResolvedModel:
    from ..bench.runner import collect_variants
    from ..recipe import load_recipe

    backend = backend or "torch"
    variants = collect_variants(run_dir, [stage] if stage else None)
    if not variants:
        raise UserError(f"{run_dir}: no finished stage with a model")
    int8 = backend in ("ort-int8", "openvino-int8") or (backend == "tensorrt" and stage is not None and
                                                         any(v.precision == "int8" for v in variants))
    rows = [v for v in variants if (v.precision == "int8") == int8]
    if not rows:
        raise UserError(f"{run_dir}: no {'int8' if int8 else 'fp32'} model for backend '{backend}'"
                        + (f" in stage '{stage}'" if stage else "") + " (export one: compressdet export --int8)")

    def file_of(v: Any) -> Path | None:
        if backend == "torch":
            return v.model_path if v.precision == "fp32" else v.files.get("torch")
        return v.files.get(backend)

    have = [v for v in rows if file_of(v) is not None]
    if not have:
        flag = {"ort": "--onnx", "ort-int8": "--onnx --int8", "openvino": "--openvino",
                "openvino-int8": "--openvino --int8", "tensorrt": "--tensorrt"}[backend]
        raise UserError(f"{run_dir}: stage '{rows[-1].stage}' has no file for backend '{backend}' "
                        f"(export it first: compressdet export {run_dir} --stage {rows[-1].stage} {flag})")
    v = have[-1]
    recipe = load_recipe(run_dir / "recipe.yaml") if (run_dir / "recipe.yaml").is_file() else None
    pp = _postprocess_defaults()
    if recipe is not None:
        try:
            cfg = recipe.stage(v.stage)
            if getattr(cfg, "postprocess", None) is not None:
                pp = cfg.postprocess.model_dump()
        except KeyError:
            pass
    from ..models import load_model

    model, meta = load_model(v.model_path)
    size = tuple(int(s) for s in model.image_size)
    classes = list(recipe.data.classes) if recipe is not None else \
        list(meta.get("classes") or default_classes(int(getattr(model, "num_classes", 3))))
    path = file_of(v)
    log(f"using {v.label} of {run_dir} on {backend}: {path}")
    return ResolvedModel(Path(path), backend, size, classes, pp, f"{v.label} ({run_dir.name})", run_dir=run_dir,
                         arch=dict(getattr(model, "arch", {}) or {}) or None)


def _classes_from_meta(meta: dict[str, str], path: Path) -> list[str] | None:
    if not meta.get("classes"):
        return None
    try:
        classes = json.loads(meta["classes"])
    except ValueError:
        raise UserError(f"{path}: metadata 'classes' is not JSON (expected a list of class names)") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"{path}: metadata 'classes' is {meta['classes'][:80]}, expected a list of class names")
    return classes


def _onnx_settings(path: Path) -> tuple[tuple[int, int] | None, list[str], dict[str, Any], dict[str, str]]:
    from ..export.runtime import onnx_metadata

    try:
        meta = onnx_metadata(path)
    except Exception as e:  # noqa: BLE001 - any parse failure: not an ONNX file
        raise UserError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return _settings(meta, path)


def _settings(meta: dict[str, str], path: Path) -> tuple[tuple[int, int] | None, list[str], dict[str, Any],
                                                          dict[str, str]]:
    """(input size, classes, postprocess, metadata) from a graph's metadata (ONNX metadata_props, IR rt_info)."""
    outputs = json.loads(meta.get("outputs", '["head"]'))
    if "boxes" in outputs:
        raise UserError(f"{path}: graph ends in decode + NMS (--with-postprocess); predict runs the raw-head graph "
                        "(export without --with-postprocess)")
    size = None
    if meta.get("input_size"):
        h, w = (int(v) for v in meta["input_size"].split("x"))
        size = (h, w)
    classes = _classes_from_meta(meta, path) or list(KITTI_CLASSES)  # graphs have recorded classes since #1
    pp = _postprocess_defaults()
    if meta.get("postprocess") not in (None, "null"):
        pp.update(json.loads(meta["postprocess"]))
    return size, classes, pp, meta


def resolve_model(model: str | Path | None, backend: str | None = None, *, stage: str | None = None,
                  runs_root: str | Path = "runs", log: Callable[[str], None] = print) -> ResolvedModel:
    """A run directory (default: the latest under ``runs_root``), a model file (``asset:<name>`` for a
    shipped one), an ONNX graph or an IR.

    Raises:
        UserError: nothing found, unknown backend, or a model file the backend cannot run.
    """
    from ..assets import resolve_model_path
    from ..rundir import latest_run_or_fail

    if backend is not None:
        check_backend(backend)
    if model is None:
        model = latest_run_or_fail(runs_root, "pass --model RUN_DIR|MODEL|ONNX|IR", log)
    path = resolve_model_path(model)
    from ..deploy.runner import is_deploy_dir, read_deploy

    if is_deploy_dir(path):  # compressdet deploy's folder: its chosen file, runtime and setting
        dep = read_deploy(path)
        chosen = dep["artifact"]
        r = resolve_model(chosen["path"], backend or chosen["backend"], runs_root=runs_root, log=log)
        run = dep["model"].get("run_dir")
        return ResolvedModel(r.path, r.backend, r.image_size, dep["classes"], {**r.postprocess, **dep["postprocess"]},
                             f"deployed {dep['chosen']} ({path})", Path(run) if run else None, r.arch)
    if path.is_dir():
        if stage and is_deploy_dir(path / stage):  # a deploy stage of the run: what it chose
            log(f"using the deploy stage '{stage}' of {path}")
            return resolve_model(path / stage, backend, runs_root=runs_root, log=log)
        return _from_run(path, backend, stage, log)
    if not path.is_file():
        raise UserError(f"--model {path}: no such run directory or model file")
    if stage:
        raise UserError(f"--stage {stage}: only valid with a run directory, {path} is a file")
    suffix = path.suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise UserError(f"--model {path}: unknown model file type '{suffix}' (expected a run directory, .pt, .onnx, "
                        ".xml or .engine)")
    allowed = _BY_SUFFIX[suffix]
    if backend is None:
        if suffix == ".onnx":
            backend = "ort-int8" if _onnx_settings(path)[3].get("precision") == "int8" else "ort"
        elif suffix == ".xml":
            backend = "openvino-int8" if path.name.endswith(".int8.xml") else "openvino"
        else:
            backend = allowed[0]
    if backend not in allowed:
        raise UserError(f"--model {path} is a {suffix} file: backend '{backend}' cannot run it "
                        f"(backends for {suffix}: {', '.join(allowed)})")
    if suffix == ".pt":
        from ..models import load_model

        m, meta = load_model(path)
        classes = list(meta.get("classes") or default_classes(int(getattr(m, "num_classes", 3))))
        return ResolvedModel(path, backend, tuple(int(s) for s in m.image_size), classes, _postprocess_defaults(),
                             path.name, arch=dict(getattr(m, "arch", {}) or {}) or None)
    if suffix == ".onnx":
        size, classes, pp, meta = _onnx_settings(path)
        if size is None:
            size = _graph_input_size(path, backend)
        return ResolvedModel(path, backend, size, classes, pp, path.name, arch=_meta_arch(meta, path))
    if suffix == ".xml":
        from ..export._openvino import ir_metadata

        # the IR's own rt_info (written at export), else the metadata of the ONNX exported beside it
        size, classes, pp, arch = None, list(KITTI_CLASSES), _postprocess_defaults(), None
        sibling = path.with_name(path.name[: -len(".xml")] + ".onnx")
        meta = ir_metadata(path)
        if meta:
            size, classes, pp, meta = _settings(meta, path)
            arch = _meta_arch(meta, path)
        elif sibling.is_file():
            size, classes, pp, meta = _onnx_settings(sibling)
            arch = _meta_arch(meta, sibling)
        if size is None:
            size = _graph_input_size(path, backend)
        return ResolvedModel(path, backend, size, classes, pp, path.name, arch=arch)
    from ..export._tensorrt import check_tensorrt

    check_tensorrt("the predict tensorrt backend")
    size = _graph_input_size(path, backend)
    # an engine holds no metadata: the ONNX it was built from, exported beside it, names classes and family
    classes, pp, arch, sibling = list(KITTI_CLASSES), _postprocess_defaults(), None, path.with_suffix(".onnx")
    if sibling.is_file():
        _, classes, pp, meta = _onnx_settings(sibling)
        arch = _meta_arch(meta, sibling)
    return ResolvedModel(path, backend, size, classes, pp, path.name, arch=arch)


def _meta_arch(meta: dict[str, str], path: Path) -> dict[str, Any] | None:
    if not meta.get("arch") or meta["arch"] in ("{}", "null"):
        return None
    try:
        arch = json.loads(meta["arch"])
    except ValueError:
        raise UserError(f"{path}: metadata 'arch' is not JSON (expected the model's arch dict)") from None
    if not isinstance(arch, dict):
        raise UserError(f"{path}: metadata 'arch' is {type(arch).__name__}, expected the model's arch dict")
    return arch


def _decoder(resolved: ResolvedModel) -> Callable[..., list[dict[str, torch.Tensor]]]:
    """The model family's own postprocessor (detector contract); ShuffleDet's when the arch is unknown."""
    from ..models import PostProcessor, model_from_arch
    from ..models._registry import ModelError
    from ..models.contract import is_detector

    if resolved.arch:
        try:
            model = model_from_arch(resolved.arch)
        except ModelError as e:
            raise UserError(f"{resolved.path}: cannot rebuild its model family to decode the outputs ({e})") from None
        if is_detector(model):
            if tuple(int(s) for s in model.image_size) != tuple(resolved.image_size):
                raise UserError(f"{resolved.path}: arch image_size {tuple(model.image_size)} differs from the model "
                                f"input {tuple(resolved.image_size)}")
            return model.eval().postprocessor(resolved.postprocess)
    return PostProcessor(resolved.image_size, num_classes=len(resolved.classes), **resolved.postprocess)


def _graph_input_size(path: Path, backend: str) -> tuple[int, int]:
    b = _open(path, backend, threads=None)
    shape = b[1]
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        raise UserError(f"{path}: input size is dynamic and the file carries no input_size metadata")
    return int(shape[2]), int(shape[3])


def _open(path: Path, backend: str, threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], list | None]:
    if backend == "tensorrt":
        from ..export._tensorrt import TensorRTRunner, check_tensorrt

        check_tensorrt("the predict tensorrt backend")
        r = TensorRTRunner(path)
        return r, r.input_shape
    from ..bench.backends import open_backend

    b = open_backend(backend, path, threads=threads)
    return b.fn, b.input_shape


class Predictor:
    """``predictor(rgb uint8 Tensor[3, H0, W0]) -> {"boxes" xyxy (original px), "scores", "labels"}``.

    The image goes through the dataset's evaluation transform (resize to the model input, BGR minus
    mean) and the raw outputs (ShuffleDet's head, or the FPN families' tuple) through the family's
    own postprocessor with the run's thresholds (boxes scaled back to the image), exactly as
    ``compressdet bench``/training evaluation do.
    """

    def __init__(self, resolved: ResolvedModel, *, threads: int | None = None):
        from ..data.transforms import DetectionTransform

        self.resolved = resolved
        self.fn, self.input_shape = _open(resolved.path, resolved.backend, threads)
        self.transform = DetectionTransform(resolved.image_size, None)
        self.pp = _decoder(resolved)

    def __call__(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        from ..export.runtime import raw_outputs_torch

        x, _ = self.transform(img, torch.zeros(0, 4))
        out = raw_outputs_torch(self.fn(x[None].float().numpy()))
        return self.pp(out, orig_sizes=[tuple(int(s) for s in img.shape[-2:])])[0]


SPLIT_PREFIX = "split:"


def split_sources(run_dir: Path | None, split: str) -> list[tuple[str, Path]]:
    """The images of ``split`` of the run's data (``SOURCE`` ``split:test``), in the split's order.

    Raises:
        UserError: the model did not come from a run directory, or the run has no such split.
    """
    from ..data import build_dataset
    from ..recipe import load_recipe

    if run_dir is None or not (Path(run_dir) / "recipe.yaml").is_file():
        raise UserError(f"{SPLIT_PREFIX}{split}: the images of a data split need --model to be a run directory")
    if split not in ("train", "val", "test"):
        raise UserError(f"{SPLIT_PREFIX}{split}: expected split:train, split:val or split:test")
    data = load_recipe(Path(run_dir) / "recipe.yaml").data.model_copy(update={"cache": False})
    ds = build_dataset(data, split, train=False)
    return [("image", ds.image_path(i)) for i in ds.ids]


def iter_sources(source: str | Path) -> list[tuple[str, Path]]:
    """``[("image" | "video", path)]`` for an image, a video, a folder of images or a glob.

    Raises:
        DataError: nothing there, or a folder/glob without images.
    """
    text = str(source)
    if text.startswith(SPLIT_PREFIX):
        return []  # resolved against the run by split_sources once the model is known
    p = Path(text)
    if p.is_file():
        return [("video" if p.suffix.lower() in VIDEO_SUFFIXES else "image", p)]
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [("image", q) for q in files]
    if any(c in text for c in "*?["):
        files = sorted(Path(q) for q in glob.glob(text, recursive=True) if Path(q).is_file())
        if not files:
            raise DataError(f"{text}: no file matches this pattern")
        return [("video" if q.suffix.lower() in VIDEO_SUFFIXES else "image", q) for q in files]
    raise DataError(f"{text}: no such image, video, folder or glob match")


@dataclass
class PredictOptions:
    out: Path = Path("predictions")
    score_threshold: float | None = None  # None: the run's postprocess score_thresh
    #: boxes drawn at score >= this; None: --score-threshold when given, else chosen on the run's val split
    #: (max F1, :func:`~compressdet.predict.threshold.choose_draw_threshold`)
    draw_threshold: float | None = None
    save_txt: str | None = None  # kitti | coco
    save_images: bool = True
    threads: int | None = None
    #: a COCO annotation file whose image and category ids the COCO results take (``--coco-gt``)
    coco_gt: Path | None = None


class CocoTarget:
    """The ids of a COCO ground truth that ``--save-txt coco`` writes: an image's id found by its file name
    (:class:`~compressdet.eval.coco_eval.ImageMatcher`: path, path tail, base name), a class's category
    id by its name (case-insensitive), so ``compressdet eval --format coco`` scores them as they are.

    Raises:
        UserError: a model class that no category of the file is named after (one line naming the class and
        the file's categories); DataError: not a COCO file.
    """

    def __init__(self, path: Path, classes: list[str]):
        from ..data.formats.coco import load_json
        from ..eval.coco_eval import ImageMatcher, category_ids_by_name

        self.path = Path(path)
        self.gt = load_json(self.path)
        by_name = category_ids_by_name(self.gt, str(self.path))
        missing = [c for c in classes if c.strip().lower() not in by_name]
        if missing:
            names = ", ".join(str(c.get("name")) for c in self.gt["categories"])
            raise UserError(f"{self.path}: no category named '{missing[0]}' (a class of the model: "
                            f"{', '.join(classes)}); its categories: {names}")
        self.category_ids = [by_name[c.strip().lower()] for c in classes]
        self.categories = [dict(c) for c in self.gt["categories"]]
        self.matcher = ImageMatcher(self.gt, str(self.path))
        self.images = {im["id"]: im for im in self.gt["images"] if "id" in im}

    def image(self, path: str | Path) -> dict[str, Any]:
        """The ground truth's image entry of ``path``.

        Raises:
            UserError: ``path`` is not an image of the file.
        """
        iid = self.matcher.match(str(path))
        if iid is None:
            raise UserError(f"{path}: not an image of {self.path} (matched by path, path tail, then base name); "
                            "predict only its images, or leave out --coco-gt")
        return self.images[iid]


def split_coco_gt(run_dir: Path | None, split: str, classes: list[str], log: Callable[[str], None]) -> Path | None:
    """The annotation file of ``split`` of a coco-format run (``SOURCE`` ``split:NAME`` with ``--save-txt coco``),
    when every model class is one of its categories and no ``class_map`` renames or merges them; else None
    (then :func:`write_split_ground_truth` writes the split as the model sees it)."""
    from ..data.formats.coco import split_paths
    from ..recipe import load_recipe

    if run_dir is None or not (Path(run_dir) / "recipe.yaml").is_file():
        return None
    data = load_recipe(Path(run_dir) / "recipe.yaml").data
    if data.format != "coco" or any(k.lower() != str(v or "").lower() for k, v in data.class_map.items()):
        return None  # a renaming/merging class_map: the file's boxes are not what the model was trained on
    ann = split_paths(data, split)[0]
    if not ann.is_file():
        return None
    try:
        CocoTarget(ann, classes)
    except UserError as e:
        log(f"note: COCO ids not taken from {ann} ({e})")
        return None
    return ann


def write_split_ground_truth(run_dir: Path, split: str, classes: list[str], out: Path) -> Path:
    """Write ``split`` of the run's data as the model sees it (its classes after ``class_map``, ignore regions
    as crowd boxes of every class, images named by their paths) to ``out``, a COCO file that
    ``--save-txt coco`` takes its ids from: predict -> ``eval --format coco`` then lines up for every data
    format and any renaming ``class_map``, scoring exactly what the run's own evaluation scores."""
    from .._io import atomic_write_json
    from ..data import build_dataset
    from ..data.records import load_box_ground_truth
    from ..eval.coco_eval import to_coco_dicts
    from ..recipe import load_recipe

    data = load_recipe(Path(run_dir) / "recipe.yaml").data.model_copy(update={"cache": False})
    ds = build_dataset(data, split, train=False)
    gt, sizes = load_box_ground_truth(data, split)
    coco, _ = to_coco_dicts(gt, sizes, {i: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0),
                                            "labels": np.zeros(0, np.int64)} for i in ds.ids}, classes)
    for im, image_id in zip(coco["images"], ds.ids):
        im["file_name"] = str(ds.image_path(image_id))
    coco["info"] = {"description": f"{SPLIT_PREFIX}{split} of {run_dir}, in the model's classes (written by "
                                   "compressdet predict)"}
    return atomic_write_json(out, coco)


def _video_reader(path: Path) -> tuple[Iterator[np.ndarray], float, int | None]:
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401 - the ffmpeg binary imageio's FFMPEG plugin needs
    except ImportError:
        raise MissingDependencyError(f"{path}: video input needs imageio and imageio-ffmpeg "
                                     "(pip install 'compressdet[video]')") from None
    try:
        reader = iio.get_reader(str(path), format="FFMPEG")
        meta = reader.get_meta_data()
    except Exception as e:  # noqa: BLE001 - imageio raises OSError/RuntimeError/ValueError
        raise DataError(f"{path}: cannot read video ({str(e).strip().splitlines()[0][:160]})") from None
    fps = float(meta.get("fps") or 25.0)
    n = meta.get("nframes")
    n = int(n) if isinstance(n, (int, float)) and np.isfinite(n) else None
    return iter(reader), fps, n


class _Writer:
    """Result files: PNGs / mp4 with boxes, KITTI txt per image, one COCO JSON."""

    def __init__(self, opts: PredictOptions, classes: list[str], target: CocoTarget | None = None):
        self.opts, self.classes, self.target = opts, classes, target
        self.out = Path(opts.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # without a ground truth: a self-consistent file (images numbered 1..N in input order, categories
        # 1..C in class order, each image's file_name) that `eval --format coco` lines up by names
        cats = target.categories if target else [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
        self.category_ids = target.category_ids if target else [i + 1 for i in range(len(classes))]
        self.coco: dict[str, Any] = {"images": [], "annotations": [], "categories": cats}
        self._names: set[str] = set()
        self.drawn: dict[str, list[dict[str, Any]]] = {}  # image name -> the boxes drawn on it (predict.json)

    def unique(self, stem: str) -> str:
        name, i = stem, 1
        while name in self._names:
            name, i = f"{stem}_{i}", i + 1
        self._names.add(name)
        return name

    def results(self, name: str, det: dict[str, torch.Tensor], thresh: float, hw: tuple[int, int],
                file_name: str) -> list:
        from ..data.kitti import write_label_file
        from ..eval.kitti_eval import predictions_to_kitti

        keep = det["scores"] >= thresh
        kept = {k: v[keep] for k, v in det.items()}
        objs = predictions_to_kitti(kept, self.classes)
        if self.opts.save_txt == "kitti":
            write_label_file(self.out / "labels" / f"{name}.txt", objs)
        elif self.opts.save_txt == "coco":
            if self.target is not None:
                im = self.target.image(file_name)
                if "height" in im and "width" in im and (int(im["height"]), int(im["width"])) != tuple(hw):
                    raise UserError(f"{file_name}: {hw[1]}x{hw[0]} px, but image id {im['id']} "
                                    f"('{im.get('file_name')}') of {self.target.path} is {im['width']}x{im['height']}")
                image_id = im["id"]
                self.coco["images"].append({"id": image_id, "file_name": im.get("file_name"), "name": name,
                                            "height": hw[0], "width": hw[1]})
            else:
                image_id = len(self.coco["images"]) + 1
                self.coco["images"].append({"id": image_id, "file_name": file_name, "name": name, "height": hw[0],
                                            "width": hw[1]})
            for b, s, lab in zip(kept["boxes"].tolist(), kept["scores"].tolist(), kept["labels"].tolist()):
                self.coco["annotations"].append({"id": len(self.coco["annotations"]) + 1, "image_id": image_id,
                                                 "category_id": self.category_ids[int(lab)],
                                                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
        return objs

    def to_draw(self, name: str | None, objs: list, thresh: float) -> list:
        """The detections drawn: those of :meth:`results` scoring >= ``thresh`` (never below the results' own
        threshold), recorded under ``name`` for predict.json (None: not)."""
        drawn = [o for o in objs if o.score >= thresh]
        if name is not None:
            self.drawn[name] = [{"class": o.type, "score": round(float(o.score), 4),
                                 "box": [round(float(v), 1) for v in o.bbox]} for o in drawn]
        return drawn

    def save_png(self, name: str, drawn: np.ndarray) -> None:
        from PIL import Image

        from .._io import atomic_path

        with atomic_path(self.out / f"{name}.png", suffix=".png.tmp") as tmp:
            Image.fromarray(drawn).save(tmp, format="PNG")

    def close(self, summary: dict[str, Any] | None = None) -> list[Path]:
        from .._io import atomic_write_json

        if summary is not None:  # what was run and at which thresholds, and the boxes drawn on each image
            atomic_write_json(self.out / "predict.json", {**summary, "drawn": self.drawn})
        if self.opts.save_txt == "coco":
            files = [atomic_write_json(self.out / "detections.coco.json", self.coco)]
            if self.target is not None:  # the plain result list pycocotools' loadRes and COCO servers take
                results = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")}
                           for a in self.coco["annotations"]]
                files.append(atomic_write_json(self.out / "detections.results.json", results))
            return files
        return []


def predict(source: str | Path | list[tuple[str, Path]], resolved: ResolvedModel, opts: PredictOptions, *,
            console: Any = None) -> dict[str, Any]:
    """Run ``resolved`` on every image/frame of ``source`` (or the :func:`iter_sources` list given)
    and write the results into ``opts.out``.

    Returns:
        ``{"images", "frames", "seconds", "images_per_s", "out", "files"}``.

    Raises:
        DataError: a missing/unreadable image or video (named); MissingDependencyError: video without imageio.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data.kitti import read_image
    from ..eval.viz import draw_detections

    if opts.save_txt not in (None, "kitti", "coco"):
        raise UserError(f"--save-txt {opts.save_txt}: expected kitti or coco")
    sources = source if isinstance(source, list) else iter_sources(source)
    target = None
    if opts.coco_gt is not None:
        if opts.save_txt != "coco":
            raise UserError(f"--coco-gt {opts.coco_gt}: only with --save-txt coco")
        target = CocoTarget(opts.coco_gt, list(resolved.classes))
        for kind, path in sources:  # every image checked before anything is written
            if kind != "image":
                raise UserError(f"{path}: --coco-gt takes images, not videos (a video's frames are not in a COCO file)")
            target.image(path)
    predictor = Predictor(resolved, threads=opts.threads)
    thresh = float(resolved.postprocess.get("score_thresh", 0.0) if opts.score_threshold is None
                   else opts.score_threshold)
    writer = _Writer(opts, resolved.classes, target)
    console = console or Console(stderr=True)
    draw = draw_threshold(predictor, resolved, opts, lambda s: console.print(s, highlight=False, markup=False,
                                                                             soft_wrap=True))
    dthresh = max(thresh, float(draw["value"]))
    n_images = sum(1 for k, _ in sources if k == "image")
    done = 0
    t0 = time.perf_counter()
    columns = (TextColumn("[bold]predict[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[speed]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{resolved.backend}", total=n_images or None, speed="")

        def tick(n: int = 1) -> None:
            nonlocal done
            done += n
            dt = time.perf_counter() - t0
            progress.update(task, advance=n, speed=f"{done / dt:.1f} img/s" if dt > 0 else "")

        for kind, path in sources:
            if kind == "image":
                img = read_image(path)  # DataError naming the file when missing or not an image
                det = predictor(img)
                name = writer.unique(path.stem)
                hw = (int(img.shape[-2]), int(img.shape[-1]))
                objs = writer.results(name, det, thresh, hw, str(path))
                if opts.save_images:
                    objs = writer.to_draw(name, objs, dthresh)
                    writer.save_png(name, draw_detections(img.permute(1, 2, 0).numpy(), dets=objs,
                                                         classes=resolved.classes))
                tick()
                continue
            frames, fps, nframes = _video_reader(path)
            if nframes:
                progress.update(task, total=(progress.tasks[0].total or 0) + nframes)
            name = writer.unique(path.stem)
            _predict_video(path, frames, fps, name, predictor, writer, thresh, dthresh, opts, tick)
    seconds = time.perf_counter() - t0
    summary = {"model": resolved.description, "path": str(resolved.path), "backend": resolved.backend,
               "classes": list(resolved.classes), "postprocess": dict(resolved.postprocess),
               "results_score_threshold": thresh, "draw_threshold": {**draw, "value": dthresh}}
    files = writer.close(summary)
    return {"images": n_images, "frames": done - n_images, "seconds": round(seconds, 3),
            "images_per_s": round(done / seconds, 2) if seconds > 0 else None, "out": str(writer.out),
            "files": [str(f) for f in files], "draw_threshold": dthresh, "results_score_threshold": thresh}


def draw_threshold(predictor: Predictor, resolved: ResolvedModel, opts: PredictOptions,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """``{"value", "source", ["val"]}``: the score a box needs to be drawn (results keep every detection at the
    run's ``score_thresh``, so ``predict --save-txt`` + ``eval`` scores what ``bench`` scores).

    ``--draw-threshold T``, else ``--score-threshold T``, else the max-F1 score on the run's val split
    (:func:`~compressdet.predict.threshold.choose_draw_threshold`; a model without a run: 0.5).
    """
    from .threshold import choose_draw_threshold

    if opts.draw_threshold is not None:
        draw = {"value": float(opts.draw_threshold), "source": "--draw-threshold"}
    elif opts.score_threshold is not None:
        draw = {"value": float(opts.score_threshold), "source": "--score-threshold"}
    elif not opts.save_images:
        return {"value": 0.0, "source": "nothing drawn (--no-images)"}
    else:
        draw = choose_draw_threshold(predictor, resolved.run_dir, list(resolved.classes), log)
    val = draw.get("val")
    how = (f"max F1 on {val['images']} val images: F1 {val['f1']:.3f}, precision {val['precision']:.3f}, recall "
           f"{val['recall']:.3f}" if val else draw["source"])
    kept = "; results (--save-txt) keep every detection, as evaluation does" if opts.score_threshold is None else ""
    log(f"drawing boxes scoring >= {draw['value']:.3f} ({how}){kept}")
    return draw


def _predict_video(path: Path, frames: Iterator[np.ndarray], fps: float, name: str, predictor: Predictor,
                   writer: _Writer, thresh: float, dthresh: float, opts: PredictOptions,
                   tick: Callable[[int], None]) -> None:
    import imageio.v2 as iio

    from .._io import atomic_path
    from ..eval.viz import draw_detections

    out = writer.out / f"{name}.mp4"
    with atomic_path(out, suffix=".tmp.mp4") as tmp:
        vw = iio.get_writer(str(tmp), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error") if opts.save_images else None
        try:
            for i, frame in enumerate(frames):
                rgb = np.ascontiguousarray(np.asarray(frame)[..., :3])
                img = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
                det = predictor(img)
                objs = writer.results(f"{name}_{i:06d}", det, thresh, rgb.shape[:2], f"{path}#{i}")
                if vw is not None:
                    objs = writer.to_draw(None, objs, dthresh)
                    vw.append_data(draw_detections(rgb, dets=objs, classes=writer.classes))
                tick()
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path}: video decoding failed ({str(e).strip().splitlines()[0][:160]})") from None
        finally:
            if vw is not None:
                vw.close()
        if vw is None:
            Path(tmp).write_bytes(b"")
    if not opts.save_images:
        os.unlink(out)
