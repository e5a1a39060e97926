"""Error types the CLI maps to exit codes.

`UserError` (and subclasses) means the input was wrong: a recipe, a path, an override, a data file.
The CLI prints its message as one line and exits 2. Anything else is a bug and exits 1.
"""

from __future__ import annotations

__all__ = ["UserError", "RecipeError", "DataError", "ArtifactError", "MissingDependencyError", "ModelError",
           "one_line"]


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (a newline as ``\\n``): names read from user files (a
    VOC ``<filename>``, a COCO ``file_name``) may hold any character, and a message naming them stays one
    line. Printable characters, non-ASCII ones included, are left as they are."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UserError(Exception):
    """Bad input from the user; the message is one readable line naming what and where."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe or override failed validation (message: ``file:line: field: problem``)."""


class DataError(UserError):
    """A data file is missing or malformed (message names the file, line and field)."""


class ArtifactError(UserError):
    """A run directory's artifact is missing or its sha256 does not match the manifest."""


class MissingDependencyError(UserError):
    """An optional backend (TensorRT, CUDA) is needed but absent; the message says what to install."""


class ModelError(UserError, ValueError):
    """A bad model name, width, image size or model file (exit code 2 in the CLI; also a ValueError).

    Defined here (not in ``models/``) so that any layer can raise or catch it without importing the
    model package; ``compressdet.models.ModelError`` is the same class.
    """
