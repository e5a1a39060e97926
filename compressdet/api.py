"""The Python API: run a recipe, read a run, predict with its model, compress a model you hold.

Why a module of its own: the CLI and notebooks should drive the same few functions, so that ``compressdet run``
is a thin layer over :func:`run` and a notebook never has to reach into ``pipeline`` or ``predict``. Everything
heavy (torch, the pipeline, the predictor) is imported inside the functions: ``import compressdet`` stays cheap.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .rundir import MANIFEST, find_latest_run, load_manifest

if TYPE_CHECKING:  # pragma: no cover - types only
    import numpy as np

    from .recipe import Recipe

__all__ = ["run", "Run", "StageInfo", "load", "Detector", "Detections", "compress"]

PathLike = str | os.PathLike[str]
#: what :func:`run` and :func:`compress` take as a factory: ``"pkg.mod:fn"`` / ``"./file.py:fn"``, a function, or a
#: :func:`functools.partial` of one with keyword arguments (recorded in the model file's ``arch``)
Factory = str | Callable[..., Any]


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
def _as_recipe(recipe: Any, overrides: Sequence[str] | None) -> Recipe:
    """A path, a :class:`Recipe` or a plain dict -> a validated Recipe; a dict goes through the same strict
    loader as a file (dumped to YAML text), so its errors name the field."""
    import yaml

    from .recipe import Recipe, load_recipe, parse_recipe

    overrides = list(overrides or [])
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe, overrides)
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        return parse_recipe(yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False), source=recipe.source or "<recipe>",
                            overrides=overrides)
    if isinstance(recipe, Mapping):
        try:
            text = yaml.safe_dump(_plain(recipe), sort_keys=False)
        except yaml.YAMLError as e:
            raise UserError(f"recipe dict: not plain YAML data ({str(e).splitlines()[0]})") from None
        return parse_recipe(text, source="<recipe dict>", overrides=overrides)
    raise UserError(f"recipe: expected a path, a compressdet.Recipe or a dict, got {type(recipe).__name__}")


def _plain(obj: Any) -> Any:
    """Tuples and paths as YAML writes plain data (``safe_dump`` refuses tuples and Path objects)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def run(recipe: PathLike | Recipe | Mapping[str, Any], overrides: Sequence[str] | None = None,
        run_dir: PathLike | None = None, resume: bool = False, runs_root: PathLike = "runs",
        from_stage: str | None = None, only: str | None = None) -> Run:
    """Run a recipe's stages (what ``compressdet run`` does) and return the finished :class:`Run`.

    Args:
        recipe: a YAML file, a :class:`~compressdet.Recipe`, or a dict with the YAML's structure (checked by the
            same strict loader: an unknown or bad field is a one-line :class:`~compressdet.errors.RecipeError`).
        overrides: dotted ``key=value`` overrides, e.g. ``["stages.teacher.schedule.steps=10"]``.
        run_dir: the run directory (default: a new ``runs_root/<name>/<time>``).
        resume: continue the latest run of this recipe (or ``run_dir``): finished stages are verified and skipped.
        runs_root: where new run directories go.
        from_stage: re-run this stage and every one after it.
        only: run only this stage (its inputs must be done).

    Raises:
        UserError: bad recipe, data or run directory (one line each).
    """
    from .pipeline import run_recipe

    rec = _as_recipe(recipe, overrides)
    path = run_recipe(rec, run_dir=Path(run_dir) if run_dir is not None else None, resume=resume,
                      from_stage=from_stage, only=only, runs_root=runs_root)
    return Run(path)


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageInfo:
    """One stage of a run as its manifest records it (``status``: pending, running, done or failed)."""

    name: str
    kind: str
    status: str


class Run:
    """A run directory (``runs/<name>/<id>/``) read through its manifest: stages, metrics, artifacts, report.

    Why: a notebook wants the numbers and files of a run without knowing the manifest's layout. The manifest is
    read on each access, so a ``Run`` of a run still going sees its progress.

    Raises:
        UserError: ``path`` is not a run directory (no manifest.json).
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        load_manifest(self.path)  # a folder that is not a run fails here, in one line

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @classmethod
    def latest(cls, where: PathLike = "runs") -> Run:
        """The most recent run under ``where``: a runs root (``"runs"``) or one recipe's folder (``"runs/demo"``).

        Raises:
            UserError: no run there.
        """
        root = Path(where)
        if any(root.glob(f"*/{MANIFEST}")):  # one recipe's folder: runs/<name>/<id>/manifest.json
            found = find_latest_run(root.parent, root.name)
        else:
            found = find_latest_run(root)
        if found is None:
            raise UserError(f"no run found under {root}/ (run a recipe first: compressdet.run(...))")
        return cls(found)

    @property
    def manifest(self) -> dict[str, Any]:
        """The run's manifest.json as a dict."""
        return load_manifest(self.path)

    @property
    def name(self) -> str:
        """The recipe's name."""
        return str(self.manifest.get("recipe") or self.path.parent.name)

    @property
    def recipe(self) -> Recipe:
        """The resolved recipe the run was made with (its ``recipe.yaml``)."""
        from .recipe import load_recipe

        p = self.path / "recipe.yaml"
        if not p.is_file():
            raise UserError(f"{self.path}: no recipe.yaml (not written by compressdet run?)")
        return load_recipe(p, check_paths=False)

    @property
    def stages(self) -> list[StageInfo]:
        """The stages in recipe order, each with its kind and status."""
        return [StageInfo(n, str(r.get("kind")), str(r.get("status", "pending")))
                for n, r in self.manifest["stages"].items()]

    def _stage(self, stage: str) -> dict[str, Any]:
        stages = self.manifest["stages"]
        if stage not in stages:
            raise UserError(f"{self.path}: no stage '{stage}' (stages: {', '.join(stages) or 'none'})")
        return stages[stage]

    def metrics(self, stage: str) -> dict[str, Any]:
        """What the stage reported (mAP, params, latency, ...); empty until it is done."""
        return dict(self._stage(stage).get("metrics") or {})

    def artifacts(self, stage: str) -> dict[str, Path]:
        """The stage's files by key (``model``, ``onnx``, ``report``, ...), as paths; empty until it is done."""
        return {k: self.path / a["path"] for k, a in (self._stage(stage).get("artifacts") or {}).items()}

    def model_path(self, stage: str | None = None) -> Path:
        """The float model file of ``stage``; default: the last finished stage that has one.

        Raises:
            UserError: the stage has no model file (e.g. export, bench), or no stage has finished one.
        """
        if stage is not None:
            arts = self.artifacts(stage)
            if "model" not in arts:
                have = [s.name for s in self.stages if "model" in self.artifacts(s.name)]
                raise UserError(f"{self.path}: stage '{stage}' has no model file (stages with one: "
                                f"{', '.join(have) or 'none'})")
            return arts["model"]
        done = [s.name for s in self.stages if s.status == "done" and "model" in self.artifacts(s.name)]
        if not done:
            raise UserError(f"{self.path}: no finished stage with a model file")
        return self.artifacts(done[-1])["model"]

    def _last_json(self, kind: str, key: str, fallback: str) -> dict[str, Any] | None:
        files = [self.artifacts(s.name).get(key) for s in self.stages if s.kind == kind and s.status == "done"]
        files = [f for f in files if f is not None and f.is_file()]
        p = files[-1] if files else self.path / fallback
        return json.loads(p.read_text()) if p.is_file() else None

    @property
    def report(self) -> dict[str, Any] | None:
        """The bench report (report.json of the last bench stage, else of ``compressdet bench``), or None."""
        return self._last_json("bench", "report", "bench/report.json")

    @property
    def deploy(self) -> dict[str, Any] | None:
        """deploy.json (of the last deploy stage, else of ``compressdet deploy``), or None."""
        return self._last_json("deploy", "report", "deploy/deploy.json")


# --------------------------------------------------------------------------------------------
# load / Detector
# --------------------------------------------------------------------------------------------
@dataclass
class Detections:
    """Detections on one image, in its original pixels: ``boxes`` ``[N, 4]`` xyxy, ``scores`` ``[N]``,
    ``labels`` ``[N]`` (index into the model's classes) and ``class_names`` (one name per box)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.class_names)


class Detector:
    """A model ready to predict, with the same pre- and post-processing as ``compressdet predict`` (it wraps
    :class:`compressdet.predict.Predictor`). Made by :func:`load`.

    Attributes:
        classes: class names (label ``i`` is ``classes[i]``); image_size: the model input (H, W);
        backend: the runtime (``torch``, ``ort``, ``ort-int8``, ``openvino``, ...); path: the file it runs.
    """

    def __init__(self, resolved: Any, *, threads: int | None = None):
        from .predict.predictor import Predictor

        self._resolved = resolved
        self._predictor = Predictor(resolved, threads=threads)
        self.classes: list[str] = list(resolved.classes)
        self.image_size: tuple[int, int] = tuple(int(s) for s in resolved.image_size)  # type: ignore[assignment]
        self.backend: str = resolved.backend
        self.path: Path = Path(resolved.path)

    def __repr__(self) -> str:
        return (f"Detector({str(self.path)!r}, backend={self.backend!r}, image_size={self.image_size}, "
                f"classes={self.classes})")

    def predict(self, images: Any, score_threshold: float | None = None) -> Detections | list[Detections]:
        """Detect objects in one image or a list of them.

        Args:
            images: a file path, a PIL image or an ``H x W x 3`` uint8 RGB array, or a list of these.
            score_threshold: keep detections scoring at least this (default: the run's ``score_thresh``).

        Returns:
            one :class:`Detections` for one image, a list for a list.

        Raises:
            UserError: an unreadable file, an array of the wrong shape or dtype, a threshold outside [0, 1].
        """
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise UserError(f"score_threshold {score_threshold}: expected a value in [0, 1]")
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        thresh = float(self._resolved.postprocess.get("score_thresh", 0.0) if score_threshold is None
                       else score_threshold)
        out = []
        for i, img in enumerate(batch):
            det = self._predictor(_as_rgb_tensor(img, "images" if single else f"images[{i}]"))
            keep = det["scores"] >= thresh
            labels = det["labels"][keep].numpy().astype("int64")
            out.append(Detections(boxes=det["boxes"][keep].float().numpy(), scores=det["scores"][keep].float().numpy(),
                                  labels=labels, class_names=[self.classes[int(k)] for k in labels]))
        return out[0] if single else out


def _as_rgb_tensor(img: Any, what: str) -> Any:
    """An image as predict reads it: ``uint8 Tensor[3, H, W]`` RGB."""
    import numpy as np
    import torch

    if isinstance(img, (str, os.PathLike)):
        from .data.kitti import read_image

        return read_image(img)  # DataError naming the file
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # noqa: N806
    if Image is not None and isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise UserError(f"{what}: expected an H x W x 3 uint8 RGB array, got shape {tuple(img.shape)} "
                            f"dtype {img.dtype}")
        if not img.flags.writeable:  # PIL's arrays are read-only; torch wants to own writable memory
            img = img.copy()
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    raise UserError(f"{what}: expected a file path, a PIL image or an H x W x 3 uint8 array, got {type(img).__name__}")


def load(path_or_run: PathLike | Run, stage: str | None = None, backend: str = "torch", *,
         runs_root: PathLike = "runs", threads: int | None = None) -> Detector:
    """Open a model to predict with: a run (its last model stage, or ``stage``), a ``.pt`` model file, an
    ``.onnx`` graph, an OpenVINO ``.xml``, a deploy folder or ``asset:<name>``, as ``compressdet predict --model``.

    Args:
        path_or_run: a :class:`Run`, a run directory, a model file, a graph, a deploy folder or ``asset:<name>``.
        stage: the run's stage whose model to open (default: the last one with a model).
        backend: ``torch``, ``ort``, ``ort-int8``, ``openvino``, ``openvino-f32``, ``openvino-int8`` or ``tensorrt``.

    Raises:
        UserError: nothing there, an unknown backend, or a file the backend cannot run.
    """
    from .predict.predictor import resolve_model

    resolved = resolve_model(os.fspath(path_or_run), backend, stage=stage, runs_root=runs_root, log=lambda s: None)
    return Detector(resolved, threads=threads)


# --------------------------------------------------------------------------------------------
# compress
# --------------------------------------------------------------------------------------------
def _factory_spec(factory: Factory, what: str) -> tuple[str, dict[str, Any]]:
    """``(factory text as a recipe writes it, keyword args)`` of a factory string, function or partial."""
    from .models._factory import parse_factory

    if isinstance(factory, str):
        return parse_factory(factory).text, {}
    args: dict[str, Any] = {}
    fn = factory
    if isinstance(fn, functools.partial):
        if fn.args:
            raise UserError(f"{what}: a partial with positional arguments cannot be recorded; pass them by keyword")
        args = dict(fn.keywords)
        fn = fn.func
    qual = getattr(fn, "__qualname__", "")
    if not callable(fn) or not qual or "<" in qual:
        raise UserError(f"{what}: expected 'pkg.module:function', './file.py:function' or a module-level function "
                        f"(a lambda or nested function cannot be imported again), got {factory!r}")
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise UserError(f"{what}: keyword arguments {sorted(args)} must be plain JSON values (they are stored in "
                        "the model file)") from None
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    file = getattr(mod, "__file__", None)
    # a package's module by its name (its relative imports work); a script, notebook file or test by its path
    if mod is not None and mod.__name__ != "__main__" and getattr(mod, "__package__", None):
        return f"{mod.__name__}:{qual}", args
    if file and str(file).endswith(".py"):
        return f"{Path(file).resolve()}:{qual}", args
    raise UserError(f"{what}: {qual} is not defined in a .py file or an importable module (a notebook cell's "
                    "function cannot be imported by another process): put it in a .py file")


def _as_detector(model: Any, factory: Factory | None, what: str, image_size: tuple[int, int],
                 classes: list[str]) -> Any:
    """``model`` on the detector contract, its ``arch`` enough to rebuild it in another process."""
    from torchvision.models.detection import FCOS, RetinaNet

    from .models import is_detector, wrap_torchvision
    from .models._factory import file_sha256, parse_factory

    if isinstance(model, (FCOS, RetinaNet)):
        if factory is None:
            raise UserError(f"{what}: a torchvision {type(model).__name__} cannot be rebuilt from its weights in "
                            f"another process (export, bench's timing, load()): pass {what}_factory=<the function "
                            "that builds it> (called with num_classes / image_size / classes where it takes them)")
        text, args = _factory_spec(factory, f"{what}_factory")
        spec = parse_factory(text)
        det = wrap_torchvision(model, image_size=image_size, classes=classes, name=spec.short)
        arch = dict(det.arch)
        arch.update({"factory": spec.text, "args": args, "classes": list(classes), "num_classes": len(classes),
                     "image_size": list(image_size)})
        if spec.is_file:
            arch["sha256"] = file_sha256(spec.target)
        det.arch = arch
        return det
    if not is_detector(model) or not isinstance(getattr(model, "arch", None), dict):
        raise UserError(f"{what}: expected a torchvision FCOS / RetinaNet or a detector on compressdet's contract with "
                        f"an 'arch' dict (compressdet.models.contract), got {type(model).__name__}")
    if factory is not None:
        raise UserError(f"{what}_factory: only for a torchvision FCOS / RetinaNet ({what} is a "
                        f"{type(model).__name__} with its own arch)")
    have = getattr(model, "image_size", None)
    if have is not None and tuple(int(v) for v in have) != tuple(image_size):
        raise UserError(f"{what}: the model's image_size {tuple(have)} differs from data.image_size {tuple(image_size)}")
    n = getattr(model, "num_classes", None)
    if n is not None and int(n) != len(classes):
        raise UserError(f"{what}: the model has num_classes={n}, data.classes has {len(classes)}: {classes}")
    return model


def _check_saved(model: Any, factory: Factory | None, role: str, tmp: Path, image_size: tuple[int, int],
                 classes: list[str]) -> Path:
    """Save ``model`` as a model file in ``tmp`` and check that it loads again, as every stage and child process
    will load it: a model that cannot be rebuilt fails here, before a run starts."""
    from .models import load_model, save_model

    det = _as_detector(model, factory, role, image_size, classes)
    p = save_model(det, tmp / f"{role}.pt", meta={"classes": list(classes), "saved_by": "compressdet.compress"})
    try:
        load_model(p)
    except UserError as e:
        raise UserError(f"{role}: the saved model does not load again ({e})") from None
    return p


def default_stages(teacher: bool, quantize: bool = True) -> list[dict[str, Any]]:
    """What :func:`compress` runs when given no stages: a fine-tune of ``student`` (distilled with FGFI from
    ``teacher`` when there is one), an INT8 post-training quantization, the ONNX export and a bench."""
    finetune: dict[str, Any] = {"name": "finetune", "kind": "train", "from": "student"}
    if teacher:
        finetune.update(teacher="teacher", distill=[{"method": "fgfi", "weight": 1.0}])
    stages = [finetune]
    if quantize:
        stages.append({"name": "int8", "kind": "ptq", "from": "finetune"})
    stages.append({"name": "export", "kind": "export", "from": "int8" if quantize else "finetune",
                   "formats": ["onnx", "onnx-int8"] if quantize else ["onnx"]})
    stages.append({"name": "bench", "kind": "bench",
                   "backends": ["torch", "ort", "ort-int8"] if quantize else ["torch", "ort"]})
    return stages


def compress(student: Any, teacher: Any = None, *, data: Mapping[str, Any], stages: Sequence[Mapping[str, Any]] | None = None,
             name: str = "compress", runs_root: PathLike = "runs", seed: int = 0,
             overrides: Sequence[str] | None = None, student_factory: Factory | None = None,
             teacher_factory: Factory | None = None) -> Run:
    """Compress model objects you already hold: they enter a recipe as ``kind: model_file`` stages named
    ``student`` and ``teacher``, then ``stages`` run on them in a run directory with a manifest, as
    ``compressdet run`` makes.

    Args:
        student: a torchvision ``FCOS`` / ``RetinaNet`` instance (wrapped with
            :func:`compressdet.models.wrap_torchvision` at ``data``'s image_size and classes; give its factory
            so that other processes can rebuild it) or a detector on compressdet's contract whose ``arch``
            rebuilds it (a registered model, or one built from a factory).
        teacher: the same kinds of object, or None (then the default fine-tune is not distilled).
        data: the recipe's ``data`` block as a dict (format, image_size, classes, ...) or a ``DataConfig``.
        stages: stage dicts with the YAML's structure, naming ``student`` / ``teacher`` in ``from`` /
            ``teacher``; default :func:`default_stages` (the fine-tune with the recipe's default schedule: set
            it with ``overrides=["stages.finetune.schedule.steps=2000"]``).
        name: the recipe name (run folder ``runs_root/<name>/<id>``; the model files go to
            ``runs_root/<name>/_inputs/``).
        overrides: dotted ``key=value`` overrides on the built recipe.
        seed: the recipe's seed.
        student_factory: for a torchvision instance: ``"pkg.mod:fn"``, ``"./file.py:fn"``, a module-level
            function or a :func:`functools.partial` of one with keyword arguments; it is recorded in the model file
            (``arch["factory"]``) and called again, with ``num_classes`` / ``image_size`` / ``classes`` where it
            takes them, wherever the file is opened (bench's timing processes, :func:`load` in a new session).
        teacher_factory: the same for a torchvision ``teacher``.

    Returns:
        the finished :class:`Run`.

    Raises:
        UserError: a model that cannot be saved and rebuilt, a bad data block or stage (one line naming it).
    """
    from .recipe import parse_recipe

    data = _plain(data.model_dump(mode="json") if hasattr(data, "model_dump") else dict(data))  # a DataConfig too
    quantizable = _quantizable(student)
    chosen = [dict(s) for s in stages] if stages is not None else default_stages(teacher is not None, quantizable)
    refs = [{"name": "student", "kind": "model_file", "path": "student.pt"}]
    if teacher is not None:
        refs.append({"name": "teacher", "kind": "model_file", "path": "teacher.pt"})
    base = {"name": name, "seed": seed, "data": data, "stages": refs + _plain(chosen)}
    import yaml

    # every field checked before a model file is written (nothing written half)
    draft = parse_recipe(yaml.safe_dump(base, sort_keys=False), source="<compress recipe>",
                         overrides=list(overrides or []), check_paths=False)
    size, classes = tuple(draft.data.image_size), list(draft.data.classes)
    import shutil
    import tempfile

    from ._io import atomic_path, sha256_file

    folder = Path(runs_root) / draft.name / "_inputs"
    with tempfile.TemporaryDirectory() as tmp:
        saved = [_check_saved(student, student_factory, "student", Path(tmp), size, classes)]
        if teacher is not None:
            saved.append(_check_saved(teacher, teacher_factory, "teacher", Path(tmp), size, classes))
        for ref, p in zip(refs, saved):  # named by their bytes: the same objects give the same recipe
            digest = sha256_file(p)
            dst = folder / f"{ref['name']}-{digest[:16]}.pt"
            with atomic_path(dst, suffix=".pt") as part:
                shutil.copyfile(p, part)
            ref.update(path=str(dst.resolve()), sha256=digest)
    return run({**base, "stages": refs + _plain(chosen)}, overrides=overrides, runs_root=runs_root)


def _quantizable(model: Any) -> bool:
    """Whether the INT8 stages know the model's structure (ShuffleDet, torchvision FCOS / RetinaNet)."""
    from torchvision.models.detection import FCOS, RetinaNet

    from .models import ShuffleDet, TorchvisionDetector

    return isinstance(model, (FCOS, RetinaNet, ShuffleDet, TorchvisionDetector))

