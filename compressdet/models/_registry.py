"""Model registry: names in recipes map to small builder functions (timm/torchvision style).

A recipe names a model as a string (``shuffledet_0.25x``) and never imports model code; builders
are registered with :func:`register_model`. Registering a name twice raises (safer than warning).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from ..errors import UserError

__all__ = ["ModelError", "register_model", "list_models", "get_model_builder", "is_model"]

_MODELS: dict[str, Callable[..., Any]] = {}


class ModelError(UserError, ValueError):
    """A bad model name, width, image size or model file (exit code 2 in the CLI; also a ValueError)."""


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the builder of ``name``.

    Args:
        name: the registry name (may contain dots, e.g. ``shuffledet_0.5x``).

    Raises:
        ValueError: ``name`` is already registered to another function.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _MODELS.get(name)
        if old is not None and old is not fn and old.__qualname__ != fn.__qualname__:
            raise ValueError(f"model '{name}' is already registered (by {old.__module__}.{old.__qualname__})")
        _MODELS[name] = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    # the registered variants live in the family files; importing them fills the registry
    from . import shuffledet  # noqa: F401


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
