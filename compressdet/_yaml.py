"""YAML reading that refuses duplicate mapping keys.

YAML says the keys of a mapping are unique, but PyYAML's ``safe_load`` keeps the last of two equal
keys without a word: a recipe with ``seed: 0`` and, further down, ``seed: 3`` ran with seed 3. Every
YAML file a user hands in (recipes, YOLO dataset files) is read here, composed once into nodes
(which keep line numbers), checked, then built with the same ``SafeLoader``. Composing is libyaml's
(PyYAML's C parser, when PyYAML was built with it): the pure-Python scanner spent about 90% of a
recipe's load time, which the fuzz budget (``make fuzz``) pays 10^5 times a target. Invalid YAML is
composed again by the pure-Python parser, whose message says what it expected and what it found.
"""

from __future__ import annotations

from typing import Any, Iterator

import yaml

__all__ = ["DuplicateKeyError", "compose_unique", "construct", "safe_load_unique", "format_key_path", "line_map"]


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice; ``path`` is the key's path (keys and list indices),
    ``line`` and ``first_line`` the 1-based lines of the repeat and of the first occurrence."""

    def __init__(self, path: tuple[Any, ...], line: int, first_line: int) -> None:
        self.path, self.line, self.first_line = path, line, first_line
        super().__init__(f"{line}: {format_key_path(path)}: duplicate key (first at line {first_line})")


def format_key_path(path: tuple[Any, ...]) -> str:
    """``("stages", 1, "schedule", "lr")`` -> ``stages[1].schedule.lr`` (how recipe errors name fields)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top>"


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` whose value errors are YAML errors with a line: PyYAML lets a few escape as they
    are (``2001-13-45`` is a timestamp to its resolver, then ``ValueError: month must be in 1..12``)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError, ArithmeticError) as e:
            what = f"{node.value!r}" if isinstance(node, yaml.ScalarNode) else "value"
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {what} ({e})", node.start_mark) from None


_Composer = getattr(yaml, "CSafeLoader", None) or _Loader
"""Scans, parses and composes in C where PyYAML has libyaml; the nodes are the same classes, built by ``_Loader``."""


def _key_value(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """What the key becomes in Python (``1`` and ``01``, ``yes`` and ``true`` are one key there)."""
    try:
        value = loader.construct_object(node)
        hash(value)
        return value
    except Exception:  # noqa: BLE001 - an unbuildable key is the constructor's to report, by its text here
        return (node.tag, node.value)


def _entries(node: yaml.Node, path: tuple[Any, ...]) -> list[tuple[yaml.Node, yaml.Node, tuple[Any, ...]]]:
    """``(key or item node, value node, value's path)`` of a mapping's or sequence's entries, in file order
    (a key that is no scalar is ``?`` in the path)."""
    if isinstance(node, yaml.MappingNode):
        return [(k, v, path + (k.value if isinstance(k, yaml.ScalarNode) else "?",)) for k, v in node.value]
    if isinstance(node, yaml.SequenceNode):
        return [(v, v, path + (i,)) for i, v in enumerate(node.value)]
    return []


def _walk(root: yaml.Node) -> Iterator[tuple[yaml.Node, tuple[Any, ...]]]:
    """Every node of a composed document with its path, depth first in file order; an anchored node
    once, at its first place (aliases repeat it, may even contain it)."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node, path
        stack.extend(reversed([(v, p) for _, v, p in _entries(node, path)]))


def line_map(root: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """The 1-based line of every key and list item of a composed document, by path (``()``: the document),
    how recipe errors point at a field."""
    if root is None:
        return {}
    lines = {(): root.start_mark.line + 1}
    for node, path in _walk(root):
        for k, _, p in _entries(node, path):
            lines.setdefault(p, k.start_mark.line + 1)
    return lines


def _check_unique(root: yaml.Node) -> None:
    loader = _Loader("")
    repeats: list[DuplicateKeyError] = []
    for node, path in _walk(root):
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[Any, int] = {}
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode):
                key, line = _key_value(loader, k), k.start_mark.line + 1
                if key in first:
                    repeats.append(DuplicateKeyError(path + (k.value,), line, first[key]))
                else:
                    first[key] = line
    if repeats:  # a parent's repeat is found before an earlier one inside its values
        raise min(repeats, key=lambda e: e.line)  # the first in the file


_SLOW = object()


def _compose_fast(text: str) -> Any:
    """libyaml's composition, or ``_SLOW`` where the pure-Python parser must answer: invalid YAML (its
    message says what it expected and found), and text where the two parsers part (control characters
    and NEL, which PyYAML refuses; a trailing tab, which libyaml accepts; ``!``, an empty scalar to one
    and null to the other), so the fast path builds what ``safe_load`` builds and accepts no more
    (``tests/test_fuzz_recipe.py`` holds the two to that)."""
    if _Composer is _Loader or "\t" in text or "!" in text or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return _SLOW
    try:
        return yaml.compose(text, Loader=_Composer)
    except yaml.YAMLError:
        return _SLOW


def compose_unique(text: str) -> yaml.Node | None:
    """The document's node tree (``None`` for an empty document); :class:`DuplicateKeyError` when a
    mapping repeats a key, any other :class:`yaml.YAMLError` for invalid YAML."""
    root = _compose_fast(text)
    if root is _SLOW:
        root = yaml.compose(text, Loader=_Loader)
    if root is not None:
        _check_unique(root)
    return root


def construct(root: yaml.Node | None) -> Any:
    """Python values of a composed document, exactly as ``yaml.safe_load`` would build them."""
    if root is None:
        return None
    loader = _Loader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` on a repeated mapping key."""
    return construct(compose_unique(text))
