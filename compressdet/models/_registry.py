"""Model registry: names in recipes map to small builder functions (timm/torchvision style).

A recipe names a model as a string (``shuffledet_0.25x``) and never imports model code; builders
are registered with :func:`register_model`. Registering a name twice raises (safer than warning).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from ..errors import ModelError

__all__ = ["ModelError", "register_model", "list_models", "get_model_builder", "is_model", "model_from_arch"]

_MODELS: dict[str, Callable[..., Any]] = {}
_FROM_ARCH: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_model(name: str, *, from_arch: Callable[[dict[str, Any]], Any] | None = None
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the builder of ``name``.

    Args:
        name: the registry name (may contain dots, e.g. ``shuffledet_0.5x``).
        from_arch: ``fn(arch dict) -> model`` that rebuilds a saved model of this name (what
            :func:`compressdet.models.load_model` dispatches to); default: the builder called with
            the arch's fields except ``name``.

    Raises:
        ValueError: ``name`` is already registered to another function.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _MODELS.get(name)
        if old is not None and old is not fn and old.__qualname__ != fn.__qualname__:
            raise ValueError(f"model '{name}' is already registered (by {old.__module__}.{old.__qualname__})")
        _MODELS[name] = fn
        if from_arch is not None:
            _FROM_ARCH[name] = from_arch
        return fn

    return deco


def _ensure_loaded() -> None:
    # the registered variants live in the family files; importing them fills the registry
    from . import shuffledet, torchvision_det, yolo  # noqa: F401  (yolo imports Ultralytics only when built)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is an fnmatch filter such as ``'shuffledet*'``."""
    _ensure_loaded()
    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _MODELS


def get_model_builder(name: str) -> Callable[..., Any]:
    """The builder registered as ``name``.

    Raises:
        ModelError: unknown name; the message lists the known names and a close match.
    """
    _ensure_loaded()
    try:
        return _MODELS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_MODELS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ModelError(f"unknown model '{name}'{hint} (known: {', '.join(sorted(_MODELS))})") from None


def model_from_arch(arch: dict[str, Any]) -> Any:
    """Rebuild the (unpruned) model an ``arch`` dict describes, dispatching on ``arch["name"]``.

    A model built by a recipe's factory (``arch["factory"]``) is rebuilt by importing that factory
    again (:mod:`compressdet.models._factory`): no registration needed in a new process.

    Raises:
        ModelError: the name is not registered (a model of a family registered by user code:
            import/register it first, or pass ``base=`` to ``load_model``); a factory's file is
            missing or its import fails.
    """
    if arch.get("factory"):
        from ._factory import factory_from_arch

        return factory_from_arch(arch)
    name = arch.get("name", "shuffledet")
    builder = get_model_builder(name)
    fn = _FROM_ARCH.get(name)
    if fn is not None:
        return fn(dict(arch))
    if arch.get("wrapped"):  # a user's builder around wrap_torchvision: called as build_model calls it
        kw = {k: arch[k] for k in ("image_size", "num_classes") if k in arch}
    else:
        kw = {k: v for k, v in arch.items() if k != "name"}
    if "image_size" in kw:
        kw["image_size"] = tuple(kw["image_size"])
    return builder(**kw)
