"""``compressdet`` command line.

Each command group lives next to the code it drives (``compressdet/<pkg>/_cli.py``) and registers
its own sub-parser, so this file only wires them up and maps errors to exit codes:
0 ok, 2 bad input (one readable line), 1 internal error (traceback with ``--debug``), 130 interrupted,
141 stdout closed by its reader (``| head``; quietly, as ``cat`` would end).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UserError

__all__ = ["main", "build_parser"]

# modules providing ``register(subparsers)``; each adds one or more commands
_COMMAND_MODULES = (
    "compressdet.models._cli",    # info
    "compressdet.data._cli",      # data
    "compressdet.eval._cli",      # eval, viz
    "compressdet.export._cli",    # export
    "compressdet.bench._cli",     # bench
    "compressdet.predict._cli",   # predict
    "compressdet.deploy._cli",    # deploy
)


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import run

    run_dir = run(args.recipe, args.overrides, run_dir=args.run_dir, resume=args.resume, from_stage=args.from_stage,
                  only=args.only, runs_root=args.runs_root).path
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"finished: {run_dir}")
        print(f"next: compressdet export {run_dir} --onnx   |   compressdet bench {run_dir}")
    return 0


def _cmd_recipe_check(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ._console import console as make_console
    from ._console import print_whole
    from .pipeline import check_data, find_latest_run, plan
    from .recipe import load_recipe

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compressdet", description="Compress one-stage detectors: teacher training, "
                                "feature imitation, pruning, INT8, export and benchmarks from one YAML recipe.")
    p.add_argument("--version", action="version", version=f"compressdet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run a recipe's stages", description="Run a recipe end to end, or resume it.")
    r.add_argument("recipe", type=Path, help="YAML recipe")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. stages.student.schedule.steps=200 or data.image_size=[192,624]")
    r.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/<name>/<time>)")
    r.add_argument("--runs-root", type=Path, default=Path("runs"), help="where new run directories go")
    r.add_argument("--resume", action="store_true", help="continue the latest (or --run-dir) run: finished "
                   "stages are verified and skipped, an interrupted one restarts from its last checkpoint")
    r.add_argument("--from-stage", default=None, metavar="NAME", help="re-run this stage and all after it")
    r.add_argument("--only", default=None, metavar="STAGE", help="run only this stage (its inputs must be done)")
    r.set_defaults(func=_cmd_run)

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

    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        module.register(sub)
    return p


def _interrupted_line(args: argparse.Namespace, where) -> str:
    """Ctrl-C during ``run``: the stage, its last saved step and the command that continues it (the same
    recipe and overrides: a resume with other settings is refused)."""
    if where is None or getattr(args, "command", None) != "run":
        return "interrupted"
    import shlex

    saved = (f"last checkpoint at step {where.step}" + (f" of {where.steps}" if where.steps else "")
             if where.step is not None else "no step checkpoint saved yet")
    cmd = shlex.join(["compressdet", "run", str(args.recipe), *args.overrides, "--run-dir", str(where.run_dir),
                      "--resume"])
    return f"interrupted: stage '{where.stage}', {saved}; continue it with: {cmd}"


#: exit status when stdout's reader went away (`| head`): 128 + SIGPIPE, what a shell reports for cat or
#: grep there, so a `set -o pipefail` script sees that the command stopped before its work was done
EXIT_CLOSED_PIPE = 141


def _closed_pipe() -> int:
    """Python's recipe for a closed stdout: point it at /dev/null so nothing buffered raises again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a file descriptor
        pass
    return EXIT_CLOSED_PIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may also follow the options: `run r.yaml --resume a.b=1`
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return int(rc or 0)
    except BrokenPipeError:  # the reader went away (`compressdet info m | head -1`): stop quietly
        return _closed_pipe()
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(_interrupted_line(args, getattr(e, "compressdet_interrupted", None)), file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: say so, keep the one-line promise unless --debug
        if args.debug:
            raise
        print(f"internal error: {e.__class__.__name__}: {e} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
