"""Runs a recipe's stages in order; owns the run directory and its manifest.

The pipeline only sequences. It creates ``runs/<recipe>/<run id>/``, writes the resolved recipe and
``manifest.json`` (atomically, after every change), hands each stage its inputs, records the
artifacts it returns with their sha256, and on ``--resume`` skips finished stages after checking
those hashes. Under ``torchrun`` every rank runs the distributed stages; only rank 0 writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from ._io import atomic_write_json, atomic_write_text, sha256_file
from .errors import ArtifactError, UserError
from .recipe import Recipe, StageConfig
from .rundir import MANIFEST, find_latest_run, load_manifest  # noqa: F401 - re-exported
from .stages import StageContext, StageInput, StageResult, env_rank, get_stage

__all__ = ["Pipeline", "cpu_platform", "StageHook", "plan", "find_latest_run", "load_manifest", "stage_fingerprint",
           "recipe_fingerprints"]



def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_platform() -> str:
    """The CPU a run was made on, e.g. ``"AMD EPYC (x86_64, torch AVX512)"``.

    Training is byte-reproducible on one CPU platform, not across them: PyTorch picks its kernels
    (and their summation orders) by the instruction set it finds. A manifest records it so a run that
    does not reproduce on another machine says why."""
    import torch

    name = ""
    try:  # Linux names the model here; platform.processor() is often empty or just "x86_64" there
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or "unknown CPU"
    return f"{name} ({platform.machine()}, torch {torch.backends.cpu.get_cpu_capability()})"


def _versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": platform.python_version(), "compressdet": __version__, "git_commit": _git_commit(),
                         "cpu": cpu_platform()}
    try:
        import torch

        v["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a hard dependency
        v["torch"] = None
    return v


#: recipe fields added after runs were made: left out of fingerprints while unset (``None``), so a run
#: made before one was added still resumes (``--resume`` refuses a stage whose fingerprint changed)
LATER_FIELDS = frozenset({"anchor_scale", "head"})


def _without_unset_later(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_unset_later(v) for k, v in obj.items() if not (k in LATER_FIELDS and v is None)}
    if isinstance(obj, list):
        return [_without_unset_later(v) for v in obj]
    return obj


def stage_fingerprint(recipe: Recipe, stage: StageConfig, upstream: dict[str, str]) -> str:
    """Hash of what determines a stage's output: its config, the data, the seed, its inputs."""
    blob = json.dumps(_without_unset_later({
        "stage": stage.model_dump(mode="json", by_alias=True), "data": recipe.data.model_dump(mode="json"),
        "seed": recipe.seed, "models": {k: m.model_dump(mode="json") for k, m in recipe.models.items()},
        "upstream": upstream}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recipe_fingerprints(recipe: Recipe) -> dict[str, str]:
    """``{stage name: stage_fingerprint}`` for every stage, each including its inputs' fingerprints."""
    out: dict[str, str] = {}
    for stage in recipe.stages:
        out[stage.name] = stage_fingerprint(recipe, stage, {ref: out.get(ref, "") for _, ref in stage.references()})
    return out


class StageHook:
    """Cross-cutting behaviour around stages (timing, logging); may keep state in the manifest."""

    def before_stage(self, pipeline: "Pipeline", name: str) -> None: ...

    def after_stage(self, pipeline: "Pipeline", name: str, result: StageResult | None) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}


class TimerHook(StageHook):
    """Records each stage's wall time in the manifest."""

    def __init__(self) -> None:
        self._t0: dict[str, float] = {}
        self.times: dict[str, float] = {}

    def before_stage(self, pipeline: "Pipeline", name: str) -> None:
        self._t0[name] = time.perf_counter()

    def after_stage(self, pipeline: "Pipeline", name: str, result: StageResult | None) -> None:
        self.times[name] = round(time.perf_counter() - self._t0.pop(name, time.perf_counter()), 3)
        pipeline.manifest["stages"][name]["wall_time_s"] = self.times[name]


class ConsoleHook(StageHook):
    """Prints one line per stage start/end on rank 0."""

    def before_stage(self, pipeline: "Pipeline", name: str) -> None:
        if pipeline.rank == 0:
            s = pipeline.recipe.stage(name)
            pipeline.console.rule(f"[bold]stage {name}[/] ({s.kind})")

    def after_stage(self, pipeline: "Pipeline", name: str, result: StageResult | None) -> None:
        if pipeline.rank == 0 and result is not None:
            rec = pipeline.manifest["stages"][name]
            scalars = [(k, v) for k, v in result.metrics.items() if isinstance(v, (int, float))]
            metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars[:6])
            pipeline.console.print(f"[green]done[/] {name} in {rec.get('wall_time_s', 0):.1f}s  {metrics}")


@dataclass
class Selection:
    """Which stages to run: all (default), from one onward, or only one."""

    from_stage: str | None = None
    only: str | None = None

    def wanted(self, names: list[str]) -> list[str]:
        for n in (self.from_stage, self.only):
            if n is not None and n not in names:
                raise UserError(f"no stage named '{n}' in this recipe (stages: {', '.join(names)})")
        if self.only:
            return [self.only]
        if self.from_stage:
            return names[names.index(self.from_stage):]
        return list(names)


@dataclass
class Pipeline:
    recipe: Recipe
    run_dir: Path
    resume: bool = False
    selection: Selection = field(default_factory=Selection)
    hooks: list[StageHook] = field(default_factory=lambda: [TimerHook(), ConsoleHook()])

    def __post_init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.rank, self.world_size, self.local_rank = env_rank()
        self.run_dir = Path(self.run_dir)
        mpath = self.run_dir / MANIFEST
        if mpath.exists():
            self.manifest = load_manifest(self.run_dir)
        else:
            self.manifest = {"recipe": self.recipe.name, "source": self.recipe.source,
                             "run_id": self.run_dir.name, "created": _now(), "versions": _versions(),
                             "stages": {}}
        for s in self.recipe.stages:
            self.manifest["stages"].setdefault(s.name, {"kind": s.kind, "status": "pending"})

    # -- manifest -------------------------------------------------------------------------------
    def save_manifest(self) -> None:
        if self.rank == 0:
            self.manifest["updated"] = _now()
            atomic_write_json(self.run_dir / MANIFEST, self.manifest)

    def _abs(self, rel: str) -> Path:
        return self.run_dir / rel

    def verify(self, name: str) -> None:
        """Re-hash a finished stage's artifacts; a mismatch is an error, never a silent re-run."""
        rec = self.manifest["stages"][name]
        for key, art in rec.get("artifacts", {}).items():
            p = self._abs(art["path"])
            if not p.is_file():
                raise ArtifactError(f"{p}: artifact '{key}' of finished stage '{name}' is missing; "
                                    f"re-run it with --from-stage {name}")
            digest = sha256_file(p)
            if digest != art["sha256"]:
                raise ArtifactError(f"{p}: sha256 {digest[:12]}... does not match the manifest's "
                                    f"{art['sha256'][:12]}... (artifact '{key}' of stage '{name}' changed "
                                    f"since it was written); re-run it with --from-stage {name}")

    def stage_input(self, name: str) -> StageInput:
        rec = self.manifest["stages"][name]
        return StageInput(name=name, kind=rec["kind"],
                          artifacts={k: self._abs(a["path"]) for k, a in rec.get("artifacts", {}).items()},
                          metrics=rec.get("metrics", {}), meta=rec.get("meta", {}))

    # -- running --------------------------------------------------------------------------------
    def status(self) -> dict[str, str]:
        return {n: r.get("status", "pending") for n, r in self.manifest["stages"].items()}

    def run(self) -> Path:
        names = [s.name for s in self.recipe.stages]
        wanted = set(self.selection.wanted(names))
        forced = wanted if (self.selection.from_stage or self.selection.only) else set()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(self.run_dir / "recipe.yaml",
                              yaml.safe_dump(self.recipe.to_yaml_dict(), sort_keys=False))
        self.save_manifest()
        fingerprints = recipe_fingerprints(self.recipe)
        for stage in self.recipe.stages:
            rec = self.manifest["stages"][stage.name]
            fp = fingerprints[stage.name]
            if stage.name not in wanted:
                if rec.get("status") != "done" and any(stage.name == ref for s in self.recipe.stages
                                                       if s.name in wanted for _, ref in s.references()):
                    raise UserError(f"stage '{stage.name}' is needed by the selected stages but has not "
                                    f"finished in {self.run_dir}")
                continue
            if rec.get("status") == "done" and self.resume and stage.name not in forced:
                self.verify(stage.name)
                if rec.get("fingerprint") not in (None, fp):
                    raise UserError(f"stage '{stage.name}' ran with different settings than the recipe now "
                                    f"gives; re-run it with --from-stage {stage.name}")
                if self.rank == 0:
                    self.console.print(f"[dim]skip {stage.name}: done, artifacts verified[/]")
                continue
            self._run_stage(stage, fp)
        return self.run_dir

    def _run_stage(self, stage: StageConfig, fp: str) -> None:
        spec = get_stage(stage.kind)
        fn = spec.load()
        rec = self.manifest["stages"][stage.name]
        # resume an interrupted attempt only if it ran these exact settings; otherwise its checkpoints
        # (a different model, schedule or pruning) must not leak into this attempt
        interrupted = rec.get("status") in ("running", "failed") and rec.get("fingerprint") == fp
        inputs = {("from" if role == "from" else role.split("[")[0]): self.stage_input(ref)
                  for role, ref in stage.references() if "[" not in role}
        for _, ref in stage.references():
            self.verify(ref)
        stage_dir = self.run_dir / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        if not (self.resume and interrupted) and self.rank == 0 and (stage_dir / "checkpoints").is_dir():
            shutil.rmtree(stage_dir / "checkpoints")  # stale: an earlier attempt's
        _barrier(self.world_size)
        ctx = StageContext(name=stage.name, cfg=stage, recipe=self.recipe, run_dir=self.run_dir,
                           stage_dir=stage_dir, inputs=inputs,
                           all_stages={n: self.stage_input(n) for n, r in self.manifest["stages"].items()
                                       if r.get("status") == "done"},
                           resume=self.resume and interrupted, rank=self.rank, world_size=self.world_size,
                           local_rank=self.local_rank, device=_resolve_device(self.recipe.device, self.local_rank))
        rec.update(status="running", started=_now(), fingerprint=fp,
                   inputs={role: inp.name for role, inp in inputs.items()})
        rec.pop("error", None)
        self.save_manifest()
        for h in self.hooks:
            h.before_stage(self, stage.name)
        result: StageResult | None = None
        try:
            if spec.distributed or self.rank == 0:
                result = fn(ctx)
            _barrier(self.world_size)
        except BaseException as e:
            rec.update(status="failed", finished=_now(), error=f"{e.__class__.__name__}: {e}".splitlines()[0])
            if not isinstance(e, (UserError, KeyboardInterrupt)):
                rec["traceback"] = traceback.format_exc(limit=8)
            for h in self.hooks:
                h.after_stage(self, stage.name, None)
            self.save_manifest()
            raise
        if self.rank == 0:
            result = result or StageResult()
            arts = {}
            for key, path in result.artifacts.items():
                p = Path(path)
                if not p.is_file():
                    raise RuntimeError(f"stage '{stage.name}' returned artifact '{key}' at {p}, which does not exist")
                arts[key] = {"path": str(p.resolve().relative_to(self.run_dir.resolve())), "sha256": sha256_file(p),
                             "bytes": p.stat().st_size}
            rec.update(status="done", finished=_now(), artifacts=arts, metrics=_jsonable(result.metrics),
                       meta=_jsonable(result.meta))
        for h in self.hooks:
            h.after_stage(self, stage.name, result)
        self.save_manifest()
        if self.world_size > 1:
            self._sync_manifest()

    def _sync_manifest(self) -> None:
        """Non-zero ranks re-read rank 0's manifest so the next stage sees its inputs."""
        _barrier(self.world_size)
        if self.rank != 0:
            self.manifest = load_manifest(self.run_dir)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def _resolve_device(device: str, local_rank: int) -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("recipe device: 'cuda' but no CUDA device is available (use device: auto or cpu)")
    if torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return "cpu"


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Start the process group under torchrun (nccl on CUDA, gloo on CPU); no-op for one process.

    ``device`` is the recipe's: ``cpu`` means gloo even on a CUDA machine (nccl cannot reduce CPU tensors).
    """
    rank, world, local = env_rank()
    if world <= 1:
        return rank, world
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return rank, world


def new_run_dir(recipe: Recipe, runs_root: Path | str = "runs") -> Path:
    """``runs/<name>/<UTC timestamp>``; rank 0 picks it and broadcasts it under torchrun."""
    rank, world, _ = env_rank()
    path: list[Any] = [None]
    if rank == 0:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        base = Path(runs_root) / recipe.name / stamp
        p, i = base, 1
        while p.exists():
            p, i = base.with_name(f"{stamp}-{i}"), i + 1
        p.mkdir(parents=True)
        path[0] = str(p)
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def plan(recipe: Recipe, run_dir: Path | None) -> list[dict[str, Any]]:
    """Rows describing what ``run`` would do: stage, kind, inputs, status in ``run_dir``."""
    manifest = load_manifest(run_dir)["stages"] if run_dir and (Path(run_dir) / MANIFEST).exists() else {}
    rows = []
    for s in recipe.stages:
        m = recipe.resolve_model(s)
        status = manifest.get(s.name, {}).get("status", "pending")
        rows.append({"stage": s.name, "kind": s.kind,
                     "inputs": ", ".join(f"{role}={ref}" for role, ref in s.references()) or "-",
                     "model": (m.arch + (f" (width {m.width})" if m.width else "")) if m else "-",
                     "status": status, "action": "skip (done)" if status == "done" else "run"})
    return rows


def run_recipe(recipe: Recipe, run_dir: Path | None = None, resume: bool = False, from_stage: str | None = None,
               only: str | None = None, runs_root: Path | str = "runs") -> Path:
    """Entry point of ``compressdet run``; returns the run directory."""
    init_distributed(recipe.device)
    if resume and run_dir is None:
        run_dir = find_latest_run(runs_root, recipe.name)
        if run_dir is None:
            raise UserError(f"--resume: no earlier run of '{recipe.name}' under {runs_root}/ (start one without --resume)")
    if run_dir is not None:
        run_dir = Path(run_dir)
        if (run_dir / MANIFEST).exists() and not (resume or from_stage or only):
            raise UserError(f"{run_dir}: already holds a run; pass --resume to continue it or "
                            "--from-stage/--only to re-run stages")
    if (from_stage or only) and run_dir is None:
        run_dir = find_latest_run(runs_root, recipe.name)
    if run_dir is None:
        run_dir = new_run_dir(recipe, runs_root)
    pipe = Pipeline(recipe, run_dir, resume=resume or bool(from_stage or only),
                    selection=Selection(from_stage=from_stage, only=only))
    if pipe.rank == 0:
        pipe.console.print(f"run directory: [bold]{run_dir}[/]")
        for line in recipe.advisories():
            pipe.console.print(f"[yellow]note[/] {line}", highlight=False)
    return pipe.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the 'compressdet run' command")
