"""The documentation site builds with ``mkdocs build --strict`` (a broken link, anchor or API reference
fails), its reference pages are generated from the code, and README stays one screen of links into it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import hooks  # noqa: E402  (docs/hooks.py, the mkdocs hook)


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    p = _build(ROOT / "mkdocs.yml", out)
    assert p.returncode == 0, p.stderr[-4000:]
    return out


def _text(page: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text()))


def test_every_recipe_field_has_a_description():
    assert hooks.missing_descriptions() == [], "add description= to these fields in compressdet/recipe.py"


def test_a_field_without_a_description_is_caught(monkeypatch):
    from compressdet.recipe import ScheduleConfig

    monkeypatch.setattr(ScheduleConfig.model_fields["lr"], "description", None)
    assert hooks.missing_descriptions() == ["ScheduleConfig.lr"]


def test_site_builds_strict_with_generated_reference(site):
    recipe = _text(site / "reference" / "recipe" / "index.html")
    kinds = hooks.own_stage_schemas()
    assert {"train", "prune", "qat", "ptq", "export", "bench", "deploy", "model_file"} <= set(kinds)
    for kind in kinds:  # every stage kind has its table, with its own fields
        assert f"kind: {kind}" in recipe
    assert "max_map_drop float 0.5 largest mAP loss" in recipe  # field, type, default, description
    assert "class_map dict[str, str | null] {}" in recipe
    cli = _text(site / "reference" / "cli" / "index.html")
    assert "compressdet data convert" in cli and "--split-file" in cli and "compressdet deploy" in cli
    api = _text(site / "reference" / "api" / "index.html")
    assert "load_recipe" in api and "UserError" in api
    # the docs' own pages and the results pages are all there, and the architecture diagrams render as mermaid
    for page in ("getting-started", "guides/data", "guides/recipes/deploy", "results/speed", "architecture"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "architecture" / "index.html").read_text().count('class="mermaid"') == 2


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The site's own validation settings turn a link to a missing page into a failed build."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [the guide](guides/nope.md).\n")
    cfg = (ROOT / "mkdocs.yml").read_text()
    cfg = cfg.split("\nnav:")[0].replace("docs_dir: docs", f"docs_dir: {docs}")
    cfg = cfg.replace("  - docs/hooks.py", f"  - {ROOT}/docs/hooks.py")
    (tmp_path / "mkdocs.yml").write_text(cfg)
    p = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert p.returncode != 0 and "guides/nope.md" in p.stderr


def test_readme_is_one_screen_of_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme  # .ci/run runs README's test command
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 10
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing
