"""Stage kind ``model_file``: an existing model file enters a recipe as a finished stage would.

Why: a later stage's ``from``/``teacher`` must name an earlier stage of the same recipe, so a
teacher trained in another run (or a model saved by a script) had no clean way in. This stage
checks the file (``sha256`` when given, and that :func:`compressdet.models.load_model` reads it),
copies it into the stage folder and returns it as its ``model`` artifact; the manifest then pins
that copy's hash like any other artifact.

Example recipe stage::

    - {name: teacher, kind: model_file, path: runs/teacher/20250101-000000/teacher/model.pt,
       sha256: 3f2a...}
    - {name: teacher, kind: model_file, path: "asset:shuffledet_1x_synthkitti"}   # shipped, see assets/
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .._io import atomic_path, sha256_file
from ..errors import ArtifactError, UserError
from . import StageContext, StageResult

__all__ = ["run"]


def run(ctx: StageContext) -> StageResult:
    from ..assets import ASSET_PREFIX, resolve_model_path
    from ..models import load_model

    src = resolve_model_path(ctx.cfg.path).expanduser()
    if not ctx.cfg.path.startswith(ASSET_PREFIX) and not src.is_absolute() and ctx.recipe.source \
            and not src.is_file():
        src = Path(ctx.recipe.source).resolve().parent / src  # relative to the recipe file
    if not src.is_file():
        raise UserError(f"stage '{ctx.name}': path: model file '{ctx.cfg.path}' does not exist")
    digest = sha256_file(src)
    if ctx.cfg.sha256 is not None and digest != ctx.cfg.sha256.lower():
        raise ArtifactError(f"stage '{ctx.name}': {src}: sha256 {digest[:12]}... does not match the recipe's "
                            f"sha256 {ctx.cfg.sha256[:12]}...")
    model, meta = load_model(src)  # a clear error now rather than in the stage that uses it
    dst = ctx.stage_dir / "model.pt"
    with atomic_path(dst, suffix=".pt") as tmp:
        shutil.copyfile(src, tmp)
    arch = getattr(model, "arch", None) or {}
    return StageResult(artifacts={"model": dst},
                       metrics={"params": sum(p.numel() for p in model.parameters())},
                       meta={"source": str(src.resolve()), "source_sha256": digest, "arch": arch,
                             "source_meta": meta})
