"""``compressdet recipe check RECIPE``: validate a recipe and print its plan (does no work)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _cmd_recipe_check(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .._console import console as make_console
    from .._console import print_whole
    from ..pipeline import check_data, find_latest_run, plan
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    data_notes: list[str] = []
    check_data(recipe, data_notes)
    run_dir = args.run_dir or find_latest_run(args.runs_root, recipe.name)
    rows = plan(recipe, run_dir)
    console = make_console()
    console.print(f"[green]ok[/] {args.recipe}: recipe '{recipe.name}', {len(rows)} stages, "
                  f"data {recipe.data.format} at {recipe.data.image_size[0]}x{recipe.data.image_size[1]}", soft_wrap=True)
    table = Table(title=f"plan (run dir: {run_dir or 'new'})")
    for col in ("stage", "kind", "model", "inputs", "status", "action"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("stage", "kind", "model", "inputs", "status", "action")))
    print_whole(console, table)
    for line in recipe.advisories() + data_notes:
        console.print(f"[yellow]note[/] {line}", highlight=False)
    if args.print_resolved:
        import yaml

        print(yaml.safe_dump(recipe.to_yaml_dict(used_only=True), sort_keys=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    rc = sub.add_parser("recipe", help="recipe tools")
    rsub = rc.add_subparsers(dest="recipe_command", metavar="ACTION")
    chk = rsub.add_parser("check", help="validate a recipe and print the plan; does no work")
    chk.add_argument("recipe", type=Path)
    chk.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    chk.add_argument("--run-dir", type=Path, default=None, help="compare against this run directory")
    chk.add_argument("--runs-root", type=Path, default=Path("runs"))
    chk.add_argument("--print-resolved", action="store_true", help="print the recipe with all defaults filled in "
                     "(data fields the data.format does not read left out)")
    chk.set_defaults(func=_cmd_recipe_check)
    rc.set_defaults(func=lambda a: (rc.print_help(), 2)[1])
