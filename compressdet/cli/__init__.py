"""``compressdet`` command line: one thin layer over the library.

Each command lives in a module of this package (``cli/<command>.py``: parse, call the library's public
functions, print) and registers its own sub-parser, so the library packages carry no command glue and
this file only wires them up and maps errors to exit codes:
0 ok, 2 bad input (one readable line), 1 internal error (traceback with ``--debug``), 130 interrupted,
141 stdout closed by its reader (``| head``; quietly, as ``cat`` would end).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import UserError

__all__ = ["main", "build_parser", "EXIT_CLOSED_PIPE"]

# modules of this package providing ``register(subparsers)``, in the order ``--help`` lists their commands
_COMMAND_MODULES = (
    "run",        # run
    "recipe",     # recipe check
    "info",       # info
    "anchors",    # anchors
    "data",       # data synth|convert|stats|kitti
    "eval",       # eval
    "viz",        # viz dets|mask|pr
    "export",     # export
    "bench",      # bench
    "predict",    # predict
    "deploy",     # deploy
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compressdet", description="Compress one-stage detectors: teacher training, "
                                "feature imitation, pruning, INT8, export and benchmarks from one YAML recipe.")
    p.add_argument("--version", action="version", version=f"compressdet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for mod in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{mod}").register(sub)
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
