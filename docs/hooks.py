"""MkDocs hook: the reference pages are generated at build time from the code, never typed by hand.

A page holds a marker and the build replaces it:

- ``<!-- generated: recipe-fields -->``: every recipe field with its type, default and description, read
  from the pydantic schema (``compressdet.recipe``: ``Recipe``, ``DataConfig`` and every stage kind
  registered with ``register_stage_schema``), so the schema is the one source of truth;
- ``<!-- generated: cli-help -->``: every command's ``--help``, from ``compressdet.cli.build_parser()``.

``tests/test_docs_site.py`` imports this module: it fails when a field has no description.
"""

from __future__ import annotations

import argparse
import json
import os
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKERS = ("<!-- generated: recipe-fields -->", "<!-- generated: cli-help -->")


# --------------------------------------------------------------------------------------------
# Recipe fields
# --------------------------------------------------------------------------------------------
def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (``X | None``, ``list[X]``, ``dict[str, X]`` ...)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models_in(a)]


def _type_name(tp: Any) -> str:
    """A field's type as a reader writes it in YAML terms: ``"a" | "b"``, ``list[int]``, ``ScheduleConfig``."""
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None:
        name = {list: "list", dict: "dict", tuple: "tuple"}.get(origin, getattr(origin, "__name__", str(origin)))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if tp is typing.Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        base = type(value).model_construct().model_dump(mode="json")  # class defaults, unvalidated
        changed = {k: v for k, v in value.model_dump(mode="json").items() if v != base.get(k)}
        return "`" + json.dumps(changed) + "` (the rest as below)" if changed else "as below"
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value) + "`"


def _yaml_key(name: str, field: FieldInfo) -> str:
    return field.alias or name


def model_fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """The fields a recipe can set (``source``, filled in by the loader, is left out)."""
    return [(n, f) for n, f in model.model_fields.items() if not f.exclude]


def own_stage_schemas() -> dict[str, type[BaseModel]]:
    """compressdet's stage kinds: a plugin's kinds registered in the same process (a test's) are not ours."""
    from compressdet import recipe as r

    return {k: cls for k, cls in sorted(r.stage_schemas().items()) if cls.__module__.split(".")[0] == "compressdet"}


def documented_models() -> list[tuple[str, type[BaseModel]]]:
    """(heading, model) for the recipe, its data block, every stage kind and every block these use."""
    from compressdet import recipe as r

    top = [("Recipe", r.Recipe), ("data", r.DataConfig)]
    top += [(f"kind: {kind}", cls) for kind, cls in own_stage_schemas().items()]
    seen = {m for _, m in top}
    out, queue = list(top), [m for _, m in top]
    while queue:
        m = queue.pop(0)
        for _, f in model_fields(m):
            for sub in _models_in(f.annotation):
                if sub not in seen:
                    seen.add(sub)
                    queue.append(sub)
                    out.append((sub.__name__, sub))
    return out


def _doc(model: type[BaseModel]) -> str:
    return " ".join(model.__doc__.split()) if model.__doc__ and model.__doc__ != BaseModel.__doc__ else ""


def describe(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """A field's description: its ``description=``; a block (a field holding one config model) without one
    is described by that model's docstring, written once on the class; a stage's ``kind`` by its schema."""
    if (field.description or "").strip():
        return " ".join(field.description.split())
    subs = [m for m in _models_in(field.annotation)]
    if len(subs) == 1 and _doc(subs[0]):
        return _doc(subs[0])
    if name == "kind" and typing.get_origin(field.annotation) is typing.Literal:
        return f"this stage's kind, `{typing.get_args(field.annotation)[0]}`: selects the fields of this table"
    return ""


def missing_descriptions() -> list[str]:
    """``Model.field`` for every recipe field the reference would leave without a description."""
    return [f"{m.__name__}.{_yaml_key(n, f)}" for _, m in documented_models() for n, f in model_fields(m)
            if not describe(m, n, f)]


def recipe_fields_markdown() -> str:
    parts = []
    for heading, model in documented_models():
        anchor = model.__name__.lower()
        doc = _doc(model)
        parts.append(f'### {heading} {{ #{anchor} }}\n')
        if heading != model.__name__:
            parts.append(f"`{model.__name__}`" + (f": {doc}" if doc else "") + "\n")
        elif doc:
            parts.append(doc + "\n")
        parts.append("| field | type | default | description |\n|---|---|---|---|")
        for name, f in model_fields(model):
            desc = describe(model, name, f).replace("|", "\\|")
            parts.append(f"| `{_yaml_key(name, f)}` | {_type_name(f.annotation)} | {_default(f)} | {desc} |")
        parts.append("")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# CLI help
# --------------------------------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*path, name))


def cli_help_markdown(width: int = 100) -> str:
    """Each command's ``--help`` at a fixed width (argparse reads ``COLUMNS``), so the page is the same everywhere."""
    from compressdet.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        parts = []
        for path, parser in _subcommands(build_parser()):
            title = " ".join(("compressdet", *path))
            parts += [f"## `{title}`\n", "```text", parser.format_help().rstrip(), "```\n"]
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# --------------------------------------------------------------------------------------------
# The hook
# --------------------------------------------------------------------------------------------
def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKERS[0] in markdown:
        markdown = markdown.replace(MARKERS[0], recipe_fields_markdown())
    if MARKERS[1] in markdown:
        markdown = markdown.replace(MARKERS[1], cli_help_markdown())
    return markdown
