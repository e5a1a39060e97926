"""One rich console for every command: terminal-wide on a terminal, wide when piped.

rich falls back to 80 columns when stdout is not a terminal (``| cat``, ``| tee log``, a CI log), which
squeezes a bench table into 3-character cells. A piped console here is at least :data:`PIPE_WIDTH` wide
(or ``$COLUMNS`` when larger), and :func:`print_whole` widens it further for a table that needs more,
so a log keeps every cell whole: a log reader scrolls, a terminal user resizes.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any

__all__ = ["console", "print_whole", "PIPE_WIDTH", "fit_fields"]

#: the width of a console whose output is not a terminal
PIPE_WIDTH = 200


@functools.cache
def _console_class() -> type:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """rich exits with status 1 when its reader went away; raise instead, so the CLI ends the
            way it ends every command whose output was cut (``compressdet.cli``: quietly, 141)."""
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the output's reader closed the pipe")

    return _Console


def console(stderr: bool = False, **kw: Any) -> Any:
    """A :class:`rich.console.Console` on stdout (``stderr=True``: stderr); not a terminal: wide."""
    c = _console_class()(stderr=stderr, **kw)
    if not c.is_terminal and not c.is_jupyter and "width" not in kw:
        cols = os.environ.get("COLUMNS", "")
        c.width = max(PIPE_WIDTH, int(cols) if cols.isdigit() else 0)
    return c


def print_whole(con: Any, renderable: Any, **kw: Any) -> None:
    """``con.print(renderable)``; on a console that is not a terminal, as wide as the renderable needs
    (a table is never folded into a log)."""
    if con.is_terminal or con.is_jupyter:
        con.print(renderable, **kw)
        return
    need = con.measure(renderable, options=con.options.update_width(100_000)).maximum
    old = con.width
    con.width = max(old, need)
    try:
        con.print(renderable, **kw)
    finally:
        con.width = old


def fit_fields(fields: list[str], width: int, sep: str = "  ") -> str:
    """As many of ``fields`` as fit in ``width`` characters, in order, each whole (a progress line never
    cuts a word: what does not fit is left out, not truncated)."""
    out: list[str] = []
    used = 0
    for f in fields:
        add = len(f) + (len(sep) if out else 0)
        if used + add > width:
            break
        out.append(f)
        used += add
    return sep.join(out)
