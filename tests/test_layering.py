"""The map in docs/architecture.md, checked on the source: the bottom imports nothing above it, the
lower packages never reach up to the pipeline or the command line, a stage never imports another stage,
eval takes masks rather than models, models know no data set or recipe, the commands live in
``compressdet/cli/`` alone, and the shared constants are defined once.

Every ``import`` in the package (module level and inside functions) is read with ``ast`` and
resolved to a ``compressdet.*`` module. Only direct imports are checked, and the order among the
lower packages is not.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "compressdet"
BOTTOM = {"errors", "_io", "_yaml", "_console", "_cpu", "conventions", "rundir", "assets"}
LOWER = {"models", "data", "losses", "engine", "eval", "export", "bench", "prune", "quant", "predict", "deploy"}
#: every stage module (a new one is checked without editing this test); ``stages/_quant.py`` is shared glue
STAGE_MODULES = {p.stem for p in (PKG / "stages").glob("*.py") if not p.stem.startswith("_")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(path: Path) -> set[str]:
    """``compressdet.*`` modules ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "compressdet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "compressdet":
                continue
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from . import x` may name a module
    return out


@functools.cache
def _sources() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_import_resolution_sees_relative_and_function_level_imports(tmp_path):
    # the checker itself: a rule on nothing would pass on anything
    imports = _imports(PKG / "cli" / "viz.py")
    assert "compressdet.models" in imports  # a function-level `from ..models import build_model`
    assert "compressdet.conventions.KITTI_CLASSES" in imports
    assert {"compressdet.data.kitti", "compressdet.errors"} <= _imports(PKG / "eval" / "kitti_eval.py")


def test_bottom_modules_import_only_each_other():
    bad = {m: sorted(i for i in imps if _top(i) not in BOTTOM)
           for m, imps in _sources().items() if _top(m) in BOTTOM}
    assert not {m: v for m, v in bad.items() if v}


def test_lower_packages_never_import_the_pipeline_stages_or_cli():
    up = {"pipeline", "stages", "cli"}
    bad = {m: sorted(i for i in imps if _top(i) in up)
           for m, imps in _sources().items() if _top(m) in LOWER}
    assert not {m: v for m, v in bad.items() if v}


def test_a_stage_never_imports_another_stage():
    assert {"train", "prune", "qat", "ptq", "export", "bench", "deploy", "model_file"} <= STAGE_MODULES
    bad = {}
    for m, imps in _sources().items():
        parts = m.split(".")
        if len(parts) == 3 and parts[1] == "stages" and parts[2] != "__init__":  # stages and their shared glue
            other = {i for i in imps if i.split(".")[:2] == ["compressdet", "stages"] and len(i.split(".")) > 2
                     and i.split(".")[2] in STAGE_MODULES - {parts[2]}}
            if other:
                bad[m] = sorted(other)
    assert not bad


def test_eval_does_not_import_models():
    # eval takes masks and detections, not anchors; `compressdet viz mask` (cli/viz.py) joins the two
    bad = {m: sorted(i for i in imps if _top(i) == "models")
           for m, imps in _sources().items() if _top(m) == "eval"}
    assert not {m: v for m, v in bad.items() if v}


def test_models_import_neither_data_nor_the_recipe():
    # the detector contract knows no data set and no recipe (recipe.py imports models); `compressdet anchors`
    # (cli/anchors.py) joins a recipe's labels with a RetinaNet's anchors
    bad = {m: sorted(i for i in imps if _top(i) in {"data", "recipe"})
           for m, imps in _sources().items() if _top(m) == "models"}
    assert not {m: v for m, v in bad.items() if v}


def test_the_commands_live_in_the_cli_package_alone():
    """No library package carries command glue (a ``_cli`` module) or imports the command line; only the
    ``python -m compressdet`` entry point does."""
    assert not sorted(str(p.relative_to(PKG)) for p in PKG.rglob("_cli.py"))
    assert {"run", "recipe", "info", "anchors", "data", "eval", "viz", "export", "bench", "predict", "deploy"} <= {
        p.stem for p in (PKG / "cli").glob("*.py")}
    users = {m: sorted(i for i in imps if _top(i) == "cli" or i.split(".")[-1] == "_cli")
             for m, imps in _sources().items() if _top(m) != "cli"}
    assert {m: v for m, v in users.items() if v} == {"compressdet.__main__": ["compressdet.cli", "compressdet.cli.main"]}


@pytest.mark.parametrize("constant", ["MEAN_BGR", "KITTI_CLASSES"])
def test_shared_constants_are_defined_once(constant):
    from compressdet import conventions

    value = getattr(conventions, constant)
    definers = []  # every literal tuple / list with the constant's value, wherever it stands
    for p in PKG.rglob("*.py"):
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.Tuple, ast.List)):
                try:
                    literal = ast.literal_eval(node)
                except ValueError:
                    continue
                if tuple(literal) == tuple(value):
                    definers.append(f"{p.relative_to(PKG)}:{node.lineno}")
    assert definers == [f"conventions.py:{_line_of(constant)}"]


def _line_of(constant: str) -> int:
    for node in ast.parse((PKG / "conventions.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == constant for t in node.targets):
            return node.lineno
    raise AssertionError(constant)


def test_only_the_cli_and_the_package_root_import_the_python_api():
    """``compressdet.api`` sits on top: the command line and ``compressdet/__init__`` use it, nothing else does."""
    users = sorted(m for m, imps in _sources().items()
                   if any(i == "compressdet.api" or i.startswith("compressdet.api.") for i in imps))
    assert all(m == "compressdet" or _top(m) == "cli" for m in users), users
    assert "compressdet.cli.run" in users  # the CLI's run is a thin layer over compressdet.run
