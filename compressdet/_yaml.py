"""YAML reading that refuses duplicate mapping keys.

YAML says the keys of a mapping are unique, but PyYAML's ``safe_load`` keeps the last of two equal
keys without a word: a recipe with ``seed: 0`` and, further down, ``seed: 3`` ran with seed 3. Every
YAML file a user hands in (recipes, YOLO dataset files) is read here, composed once into nodes
(which keep line numbers), checked, then built with the same ``SafeLoader``.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "compose_unique", "construct", "safe_load_unique", "format_key_path"]


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


def _key_value(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """What the key becomes in Python (``1`` and ``01``, ``yes`` and ``true`` are one key there)."""
    try:
        value = loader.construct_object(node)
        hash(value)
        return value
    except Exception:  # noqa: BLE001 - an unbuildable key is the constructor's to report, by its text here
        return (node.tag, node.value)


def _check_unique(root: yaml.Node) -> None:
    loader = _Loader("")
    repeats: list[DuplicateKeyError] = []
    seen: set[int] = set()  # an anchored node is walked once (aliases repeat it, may even contain it)
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            children = []
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    key = _key_value(loader, k)
                    line = k.start_mark.line + 1
                    if key in first:
                        repeats.append(DuplicateKeyError(path + (k.value,), line, first[key]))
                    else:
                        first[key] = line
                children.append((v, path + (k.value if isinstance(k, yaml.ScalarNode) else "?",)))
            stack.extend(reversed(children))  # depth first in file order: the first repeat is reported
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(v, path + (i,)) for i, v in enumerate(node.value)]))
    if repeats:
        raise min(repeats, key=lambda e: e.line)  # the first in the file


def compose_unique(text: str) -> yaml.Node | None:
    """The document's node tree (``None`` for an empty document); :class:`DuplicateKeyError` when a
    mapping repeats a key, any other :class:`yaml.YAMLError` for invalid YAML."""
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
