"""Stage registry and the contract between the pipeline and a stage.

A stage kind is a function ``run(ctx: StageContext) -> StageResult``: it reads its config and the
artifacts of the stages it names (``ctx.inputs``) and returns the files it wrote in
``ctx.stage_dir``. Stages never import each other; what one stage hands the next is an artifact
file plus JSON metadata recorded in the manifest.

Built-in kinds are registered by import string so ``compressdet recipe check`` stays light; tests
and plugins register functions directly with :func:`register_stage`.

Artifact names used by the built-in kinds (so later stages know what to look for):
    ``model``:     a model file written by ``compressdet.models.save_model`` (arch + state_dict)
    ``onnx``:      an fp32 ONNX graph; ``onnx_int8``: an INT8 QDQ ONNX graph
    ``quantized``: a quantized PyTorch program (``torch.export`` ``.pt2``)
    ``report``:    a JSON report; ``metrics`` always go to the manifest too
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError

if TYPE_CHECKING:
    from ..recipe import Recipe, StageConfig

__all__ = ["StageContext", "StageResult", "StageInput", "StageSpec", "register_stage", "get_stage",
           "list_stages"]


@dataclass
class StageInput:
    """What an earlier, finished stage left: absolute artifact paths, metrics and metadata."""

    name: str
    kind: str
    artifacts: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def artifact(self, key: str) -> Path:
        if key not in self.artifacts:
            raise UserError(f"stage '{self.name}' ({self.kind}) produced no '{key}' artifact "
                            f"(it has: {', '.join(self.artifacts) or 'none'})")
        return self.artifacts[key]


@dataclass
class StageResult:
    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage may use. ``inputs`` maps 'from'/'teacher' to the referenced stage."""

    name: str
    cfg: "StageConfig"
    recipe: "Recipe"
    run_dir: Path
    stage_dir: Path
    inputs: dict[str, StageInput]
    all_stages: dict[str, StageInput]
    resume: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoints"

    @property
    def tb_dir(self) -> Path:
        return self.run_dir / "tb" / self.name

    def latest_checkpoint(self) -> Path | None:
        """The stage's own last checkpoint when resuming an interrupted run, else None."""
        p = self.checkpoint_dir / "last.pt"
        return p if (self.resume and p.is_file()) else None

    def input(self, role: str) -> StageInput:
        if role not in self.inputs:
            raise UserError(f"stage '{self.name}' needs '{role}: <stage name>' in the recipe")
        return self.inputs[role]


@dataclass
class StageSpec:
    kind: str
    target: Callable[[StageContext], StageResult] | str
    distributed: bool = False  # True: every rank runs it; False: rank 0 runs it, others wait

    def load(self) -> Callable[[StageContext], StageResult]:
        if callable(self.target):
            return self.target
        mod, _, fn = self.target.partition(":")
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("compressdet"):
                raise UserError(f"stage kind '{self.kind}' is not available in this version ({mod} missing)") from None
            raise
        return getattr(module, fn)


_REGISTRY: dict[str, StageSpec] = {
    "train": StageSpec("train", "compressdet.stages.train:run", distributed=True),
    "prune": StageSpec("prune", "compressdet.stages.prune:run", distributed=True),
    "qat": StageSpec("qat", "compressdet.stages.qat:run", distributed=True),
    "ptq": StageSpec("ptq", "compressdet.stages.ptq:run"),
    "export": StageSpec("export", "compressdet.stages.export:run"),
    "bench": StageSpec("bench", "compressdet.stages.bench:run"),
    "deploy": StageSpec("deploy", "compressdet.stages.deploy:run"),
    "model_file": StageSpec("model_file", "compressdet.stages.model_file:run"),
}


def register_stage(kind: str, *, distributed: bool = False, replace: bool = False
                   ) -> Callable[[Callable[[StageContext], StageResult]], Callable[[StageContext], StageResult]]:
    """Register ``fn`` as the runner of stage ``kind`` (its schema goes to recipe.register_stage_schema)."""

    def deco(fn: Callable[[StageContext], StageResult]) -> Callable[[StageContext], StageResult]:
        if kind in _REGISTRY and not replace and _REGISTRY[kind].target is not fn:
            raise ValueError(f"stage kind '{kind}' is already registered")
        _REGISTRY[kind] = StageSpec(kind, fn, distributed)
        return fn

    return deco


def get_stage(kind: str) -> StageSpec:
    if kind not in _REGISTRY:
        raise UserError(f"unknown stage kind '{kind}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[kind]


def list_stages() -> list[str]:
    return sorted(_REGISTRY)


def env_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
