"""Property-based fuzzing of the recipe loader and the override parser (issue #44).

For arbitrary text, for the shipped recipes (``recipes/*.yaml``) after random edits (lines deleted or
duplicated, values swapped, replaced by random scalars or by values of the wrong type) and for random
``KEY=VALUE`` overrides, ``parse_recipe`` returns a valid :class:`Recipe` or raises a ``UserError`` whose
message is one line per problem, each naming the file; never another exception. A recipe that loads also
loads again from its resolved form (what a run writes as its ``recipe.yaml``), to the same settings.

Budget: ``COMPRESSDET_FUZZ_EXAMPLES`` examples per target (default 40, what ``make test`` runs); with
``COMPRESSDET_FUZZ_COUNT_DIR`` set, each target writes ``<target>.json`` there:
``{"examples": n, "failures": 0 | 1}`` (``tests/_fuzz.py``, shared by every fuzz test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _fuzz import FUZZ, counted  # tests/ is on sys.path
from hypothesis import given
from hypothesis import strategies as st

from compressdet import _yaml
from compressdet.errors import UserError
from compressdet.recipe import Recipe, parse_recipe

SOURCE = "fuzz.yaml"
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
TEXTS = {p.name: p.read_text() for p in RECIPES}


def _parse(text: str, overrides: list[str] | None, check_paths: bool) -> Recipe | None:
    try:
        recipe = parse_recipe(text, SOURCE, list(overrides or []), check_paths=check_paths)
    except UserError as e:
        msg = str(e)
        assert msg.strip(), repr(msg)
        for line in msg.split("\n"):
            assert line.startswith(SOURCE) and len(line.splitlines()) == 1, repr(msg)
        return None
    assert isinstance(recipe, Recipe)
    return recipe


def outcome(text: str, overrides: list[str] | None = None) -> Recipe | None:
    """The recipe, or None after a UserError of one line per problem, each naming the file. Also with
    the path checks on (they look up data.root, layouts, pretrained files in the empty working folder)."""
    _parse(text, overrides, check_paths=True)
    recipe = _parse(text, overrides, check_paths=False)
    if recipe is None:
        return None
    resolved = yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False)
    again = parse_recipe(resolved, SOURCE, check_paths=False)  # a run's recipe.yaml must load again, to the same settings
    assert again.model_dump(exclude={"source"}) == recipe.model_dump(exclude={"source"})
    assert [s.model_dump() for s in again.stages] == [s.model_dump() for s in recipe.stages]
    return recipe


@pytest.mark.parametrize("fmt, field", [("yolo", "data.yolo"), ("coco", "data.root"), ("voc", "data.root")])
def test_data_without_a_location_and_classes_omitted_names_the_field(fmt, field):
    """Found by ``make fuzz`` (recipe_mutated, ~350k examples in): yolo_example.yaml without its ``yolo:`` line
    (no data.root either) ended in a TypeError while reading the categories for the omitted classes."""
    text = (f"name: x\ndata:\n  format: {fmt}\n  image_size: [416, 416]\nstages:\n  - name: student\n"
            "    kind: train\n    model: shuffledet_0.25x\n")
    assert outcome(text) is None
    with pytest.raises(UserError, match=f"format '{fmt}' needs {field}"):
        parse_recipe(text, SOURCE, check_paths=False)


# ---- strategies -----------------------------------------------------------------------------------------

#: YAML scalars as a user may type them, right or wrong for the field they land in
SCALAR_TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1.5", "1e309", ".nan", ".inf", "-.inf", "null", "~", "true", "no", "''", '""',
                     "[]", "{}", "[1, 2]", "[64, 192]", "{a: 1}", "abc", "shuffledet_1x", "teacher", "student",
                     "2001-13-45", "2001-12-14", "0x10", "0o17", "1_000", "'1'", "*x", "&x 1", "!!int x",
                     "!!binary AAA", "!!python/object:os.system", "|\n  text", "<<", "? a", "- a", ": b"]),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12))


@st.composite
def mutated_recipe(draw) -> str:
    """A shipped recipe after 1-4 line edits."""
    lines = TEXTS[draw(st.sampled_from(sorted(TEXTS)))].splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap_values", "scalar", "wrong_type", "indent",
                                   "move"]))
        key, sep, value = lines[i].partition(":")
        if op == "delete":
            del lines[i]
        elif op == "duplicate":  # the same key twice (a duplicate-key error), or an item twice
            lines.insert(i, lines[i])
        elif op == "swap_values":
            j = draw(st.integers(0, len(lines) - 1))
            k2, sep2, v2 = lines[j].partition(":")
            if sep and sep2:
                lines[i], lines[j] = key + sep + v2, k2 + sep2 + value
        elif op == "scalar" and sep:
            lines[i] = f"{key}: {draw(SCALAR_TEXT)}"
        elif op == "wrong_type" and sep:
            lines[i] = f"{key}: " + draw(st.sampled_from(["[1, 2, 3]", "{x: 1}", "'text'", "-7", "[]", "{}",
                                                          "[[1]]", "true", "null", "0.0"]))
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 6)) + lines[i].lstrip()
        elif op == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
    return "\n".join(lines) + "\n"


def _paths(node, prefix=()):
    """Dotted override paths into a recipe document, stage names used for stages (as users write them)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (str(k),)
            yield from _paths(v, prefix + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            name = v.get("name") if prefix == ("stages",) and isinstance(v, dict) else None
            part = str(name) if name is not None else str(i)
            yield prefix + (part,)
            yield from _paths(v, prefix + (part,))


@st.composite
def overrides(draw, text: str) -> list[str]:
    """1-4 ``KEY=VALUE`` overrides: keys that exist in the recipe, near misses, indices and random text."""
    known = [".".join(p) for p in _paths(yaml.safe_load(text))]
    key = st.one_of(st.sampled_from(known), st.sampled_from(known).map(lambda k: k + "." + "x"),
                    st.sampled_from(["stages.9.name", "stages.-1.kind", "stages.nope.x", "data..root", ".seed",
                                     "seed.", "", "stages", "data", "models.m.arch", "stages.0", "name.x"]),
                    st.text(max_size=10))
    value = st.one_of(SCALAR_TEXT, st.just(""))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        k = draw(key)
        out.append(k if draw(st.integers(0, 9)) == 0 else f"{k}={draw(value)}")  # sometimes no '='
    return out


# ---- targets ----------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths a recipe names (data.root, layouts) are looked up here, never in the repo


def test_fuzz_recipe_arbitrary_text():
    with counted("recipe_arbitrary_text") as box:
        @FUZZ
        @given(text=st.one_of(st.text(max_size=200),
                              st.lists(st.one_of(SCALAR_TEXT, st.sampled_from(["name: x", "stages:", "  - a: 1",
                                                                               "data: {format: synth}", "seed: 1",
                                                                               "  - name: t", "    kind: train"])),
                                       max_size=8).map("\n".join)))
        def run(text):
            box["n"] += 1
            outcome(text)

        run()


def test_fuzz_recipe_mutated():
    with counted("recipe_mutated") as box:
        @FUZZ
        @given(text=mutated_recipe())
        def run(text):
            box["n"] += 1
            outcome(text)

        run()


def test_fuzz_recipe_overrides():
    with counted("recipe_overrides") as box:
        @FUZZ
        @given(data=st.data())
        def run(data):
            box["n"] += 1
            text = TEXTS[data.draw(st.sampled_from(sorted(TEXTS)))]
            outcome(text, data.draw(overrides(text)))

        run()


def _pure(text: str):
    """What PyYAML's pure-Python parser makes of ``text``, with the duplicate-key check: the reference."""
    root = yaml.compose(text, Loader=_yaml._Loader)
    if root is not None:
        _yaml._check_unique(root)
    return _yaml.construct(root)


def _either(load, text: str):
    try:
        return "ok", repr(load(text))  # repr: nan != nan, and 1 == True, but their reprs tell them apart
    except yaml.YAMLError:
        return "error", None


def test_fuzz_yaml_fast_path():
    """libyaml composes what the pure-Python parser composes (``compressdet/_yaml.py`` takes libyaml's way
    for speed): the same values, and the same verdict on what is no YAML."""
    with counted("yaml_fast_path") as box:
        @FUZZ
        @given(text=st.one_of(st.text(max_size=120), mutated_recipe(),
                              st.lists(st.one_of(SCALAR_TEXT, st.sampled_from(["a:", "  - b: 1", "c: {d: 1}", "- 1",
                                                                               "? k", "&x y: *x", "e: [1, {f: 2}]"])),
                                       max_size=8).map("\n".join)))
        def run(text):
            box["n"] += 1
            assert _either(_yaml.safe_load_unique, text) == _either(_pure, text), repr(text)

        run()


def test_the_shipped_recipes_load_and_round_trip():
    """The mutations start from valid recipes (else every example would test one error path only)."""
    for name, text in TEXTS.items():
        assert outcome(text) is not None, name
