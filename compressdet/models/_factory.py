"""Model factories outside compressdet, named by a recipe and re-imported by every process.

A recipe's ``model: {factory: "my_pkg.detectors:build", args: {...}}`` or ``{factory:
"./my_detector.py:build"}`` names a function that returns a torchvision ``FCOS`` / ``RetinaNet``
(wrapped with :func:`~compressdet.models.wrap_torchvision`) or an object already on the detector
contract. Nothing registers it: the model's ``arch`` records where the factory came from (the
module, or the file's absolute path and sha256) and its arguments, and
:func:`compressdet.models.model_from_arch` imports it again, so each process that opens the model
file (export, bench's timing children, predict, DDP workers, eval) rebuilds it in a new shell.

A factory is called with the recipe's ``args`` plus ``num_classes``, ``image_size`` (``(H, W)``)
and ``classes`` for each of these its signature accepts (by name, or through ``**kwargs``) and
``args`` does not already set.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError

__all__ = ["FactorySpec", "parse_factory", "import_factory", "build_from_factory", "factory_from_arch",
           "file_sha256", "PASSED_BY_NAME"]

#: what a factory receives when its signature takes it and ``args`` does not set it
PASSED_BY_NAME = ("num_classes", "image_size", "classes")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FILE_MODULES: dict[str, Any] = {}  # absolute path -> module: one import per file and process
_WARNED: set[tuple[str, str]] = set()
log = logging.getLogger("compressdet.models")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


@dataclass(frozen=True)
class FactorySpec:
    """Where a factory lives: ``target`` a module name or an absolute ``.py`` path, ``attr`` the
    (possibly dotted) name in it."""

    target: str
    attr: str
    is_file: bool

    @property
    def text(self) -> str:
        return f"{self.target}:{self.attr}"

    @property
    def short(self) -> str:
        """The name a model of this factory goes by (``arch["name"]``): file name or module, and function."""
        return f"{Path(self.target).name if self.is_file else self.target}:{self.attr}"


def parse_factory(spec: str, base_dir: str | Path | None = None) -> FactorySpec:
    """``"pkg.mod:fn"`` or ``"path/to/file.py:fn"`` (relative paths from ``base_dir``, default the
    current directory) -> :class:`FactorySpec`.

    Raises:
        ModelError: not of either form.
    """
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not all(p.isidentifier() for p in attr.split(".")):
        raise ModelError(f"factory '{spec}': expected 'package.module:function' or './file.py:function'")
    if target.endswith(".py") or "/" in target or "\\" in target:
        p = Path(target).expanduser()
        if not p.is_absolute():
            p = Path(base_dir or ".") / p
        return FactorySpec(str(p.resolve()), attr, True)
    if not _MODULE.match(target):
        raise ModelError(f"factory '{spec}': '{target}' is neither a module name nor a .py file")
    return FactorySpec(target, attr, False)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import_file(path: str) -> Any:
    mod = _FILE_MODULES.get(path)
    if mod is not None:
        return mod
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model factory file '{p}' does not exist")
    name = "compressdet_factory_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ModelError(f"model factory file '{p}' cannot be imported (not a Python file?)")
    mod = importlib.util.module_from_spec(spec)
    # the file's folder joins the import path, so it can import the modules beside it
    if str(p.parent) not in sys.path:
        sys.path.append(str(p.parent))
    sys.modules[name] = mod  # dataclasses, pickling and typing look their module up here
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - any failure in user code is reported as one line
        sys.modules.pop(name, None)
        raise ModelError(f"model factory file '{p}': import failed: {_one_line(e)}") from None
    _FILE_MODULES[path] = mod
    return mod


def import_factory(spec: FactorySpec) -> Callable[..., Any]:
    """Import the factory function (a file once per process; a module the usual way).

    Raises:
        ModelError: missing file, failing import, missing or non-callable attribute.
    """
    if spec.is_file:
        mod = _import_file(spec.target)
        where = f"model factory file '{spec.target}'"
    else:
        try:
            mod = importlib.import_module(spec.target)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"model factory module '{spec.target}' cannot be imported: {_one_line(e)} (install it, "
                             "add its folder to PYTHONPATH, or name the file: './path/to/file.py:function')") from None
        where = f"model factory module '{spec.target}'"
    obj = mod
    for part in spec.attr.split("."):
        if not hasattr(obj, part):
            have = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))[:12]
            raise ModelError(f"{where} has no '{spec.attr}' (callables there: {', '.join(have) or 'none'})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{where}: '{spec.attr}' is a {type(obj).__name__}, not a function")
    return obj


def _call(fn: Callable[..., Any], spec: FactorySpec, args: dict[str, Any], given: dict[str, Any]) -> Any:
    kwargs = dict(args)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: args only
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for k, v in given.items():
        if k not in kwargs and (var_kw or k in params):
            kwargs[k] = v
    try:
        return fn(**kwargs)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: one line naming it
        raise ModelError(f"model factory '{spec.short}' failed with args {args}: {_one_line(e)}") from None


def build_from_factory(factory: str | FactorySpec, args: dict[str, Any] | None = None, *,
                       image_size: Sequence[int], classes: Sequence[str], box_bias_init: bool | None = None,
                       base_dir: str | Path | None = None, expected_sha256: str | None = None) -> Any:
    """Import and call a factory, put what it returns on the detector contract, record it in ``arch``.

    Args:
        factory: ``"pkg.mod:fn"`` / ``"./file.py:fn"`` (relative to ``base_dir``) or a parsed spec.
        args: keyword arguments for the factory (JSON-able: they are stored in ``arch``).
        image_size, classes: the recipe's ``data.image_size`` and ``data.classes``.
        box_bias_init: FCOS box-bias initialisation of a wrapped torchvision instance (see
            :func:`~compressdet.models.wrap_torchvision`).
        expected_sha256: the factory file's hash when the model was saved; a different file is
            rebuilt with a warning naming it (the weights still have to fit, or loading fails).

    Returns:
        the detector, its ``arch`` extended with ``factory`` (module or absolute path + ``:fn``),
        ``args``, ``sha256`` (files), ``classes``, ``num_classes`` and ``image_size``.
    """
    from torchvision.models.detection import FCOS, RetinaNet

    from .contract import is_detector
    from .torchvision_det import wrap_torchvision

    spec = factory if isinstance(factory, FactorySpec) else parse_factory(factory, base_dir)
    args = dict(args or {})
    fn = import_factory(spec)
    sha = file_sha256(spec.target) if spec.is_file else None
    if expected_sha256 and sha and sha != expected_sha256 and (spec.target, sha) not in _WARNED:
        _WARNED.add((spec.target, sha))
        log.warning("model factory file '%s' changed since the model was saved (sha256 %s..., now %s...): "
                    "rebuilt with the current file", spec.target, expected_sha256[:12], sha[:12])
    size = tuple(int(v) for v in image_size)
    obj = _call(fn, spec, args, {"num_classes": len(classes), "image_size": size, "classes": list(classes)})
    if isinstance(obj, (FCOS, RetinaNet)):
        model = wrap_torchvision(obj, image_size=size, classes=classes, name=spec.short, box_bias_init=box_bias_init)
    elif is_detector(obj):
        model = obj
        n = getattr(model, "num_classes", None)
        if n is not None and int(n) != len(classes):
            raise ModelError(f"model factory '{spec.short}' built a detector with num_classes={n}, but "
                             f"data.classes has {len(classes)}: {list(classes)}")
        have = getattr(model, "image_size", None)
        if have is not None and tuple(int(v) for v in have) != size:
            raise ModelError(f"model factory '{spec.short}' built a detector for image_size {tuple(have)}, but "
                             f"data.image_size is {size}")
    else:
        raise ModelError(f"model factory '{spec.short}' returned a {type(obj).__name__}: expected a torchvision FCOS "
                         "or RetinaNet instance, or a detector on compressdet's contract "
                         "(compressdet.models.contract.is_detector)")
    arch = dict(getattr(model, "arch", None) or {})
    arch.setdefault("name", spec.short)
    arch.update({"factory": spec.text, "args": args, "classes": list(classes), "num_classes": len(classes),
                 "image_size": list(size)})
    if sha:
        arch["sha256"] = sha
    if box_bias_init is not None:
        arch["box_bias_init"] = bool(box_bias_init)
    model.arch = arch
    return model


def factory_from_arch(arch: dict[str, Any]) -> Any:
    """Rebuild a factory model from its ``arch`` (what :func:`model_from_arch` calls); its weights are
    loaded after, so no initialisation is applied here."""
    for key in ("image_size", "classes"):
        if key not in arch:
            raise ModelError(f"factory model '{arch.get('name')}': arch has no '{key}'")
    model = build_from_factory(arch["factory"], arch.get("args") or {}, image_size=arch["image_size"],
                               classes=arch["classes"], box_bias_init=False, expected_sha256=arch.get("sha256"))
    model.arch = dict(arch)  # as saved: a re-saved model records the factory file it was trained with
    return model
