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
from .errors import ArtifactError, DataError, UserError, one_line
from .recipe import Recipe, StageConfig
from .rundir import MANIFEST, find_latest_run, load_manifest  # noqa: F401 - re-exported
from .stages import StageContext, StageInput, StageResult, env_rank, get_stage

__all__ = ["Pipeline", "cpu_platform", "StageHook", "plan", "find_latest_run", "load_manifest", "stage_fingerprint",
           "recipe_fingerprints", "stage_settings", "recipe_settings", "changed_settings"]



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
LATER_FIELDS = frozenset({"anchor_scale", "head", "factory", "args", "box_bias_init", "weights", "clip"})
#: later fields whose default does what recipes did before them: fingerprinted as before (``_DROP``: absent,
#: else the older spelling). ``schedule.amp: auto`` is ``true``'s new name; ``quant.quantizer: x86`` the only
#: placement there was. ``quant.reduce_range: auto`` is resolved on this CPU (:func:`_quant_settings`).
_DROP = object()
LEGACY_EQUAL = {"amp": ("auto", True), "quantizer": ("x86", _DROP)}


def _without_unset_later(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in LATER_FIELDS and v is None:
                continue
            if k in LEGACY_EQUAL and v == LEGACY_EQUAL[k][0] and not isinstance(v, bool):
                if LEGACY_EQUAL[k][1] is _DROP:
                    continue
                v = LEGACY_EQUAL[k][1]
            out[k] = _without_unset_later(v)
        return out
    if isinstance(obj, list):
        return [_without_unset_later(v) for v in obj]
    return obj


def _quant_settings(stage: dict[str, Any]) -> None:
    """``quant.reduce_range`` as this CPU applies it: 8-bit (``false``, or ``auto`` where the CPU has an int8
    dot product) is what runs before the field had, left out; 7-bit (``true``, or ``auto`` elsewhere) is
    another model."""
    quant = stage.get("quant")
    if isinstance(quant, dict) and "reduce_range" in quant:
        from types import SimpleNamespace

        from .quant._pt2e import resolve_reduce_range

        if resolve_reduce_range(SimpleNamespace(**quant)):
            quant["reduce_range"] = True
        else:
            del quant["reduce_range"]


def stage_settings(recipe: Recipe, stage: StageConfig, upstream: dict[str, str]) -> dict[str, Any]:
    """What determines a stage's output: its config, the data, the seed, the models, its inputs'
    fingerprints. The manifest keeps it beside the fingerprint, so a refusal can name what changed."""
    settings = _without_unset_later({
        "stage": stage.model_dump(mode="json", by_alias=True), "data": recipe.data.model_dump(mode="json"),
        "seed": recipe.seed, "models": {k: m.model_dump(mode="json") for k, m in recipe.models.items()},
        "upstream": upstream})
    _quant_settings(settings["stage"])
    m = recipe.resolve_model(stage)
    if m is not None and m.factory:  # the code of a factory file is a setting too: an edited file re-runs the stage
        from .models._factory import file_sha256, parse_factory
        from .recipe import recipe_dir

        spec = parse_factory(m.factory, recipe_dir(recipe))
        if spec.is_file and Path(spec.target).is_file():
            settings["factory_sha256"] = file_sha256(spec.target)
    return settings


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def stage_fingerprint(recipe: Recipe, stage: StageConfig, upstream: dict[str, str]) -> str:
    """Hash of :func:`stage_settings`: equal fingerprints, equal output."""
    return _digest(stage_settings(recipe, stage, upstream))


def recipe_settings(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """``{stage name: stage_settings}`` for every stage, each including its inputs' fingerprints."""
    out: dict[str, dict[str, Any]] = {}
    for stage in recipe.stages:
        out[stage.name] = stage_settings(recipe, stage, {ref: _digest(out[ref]) if ref in out else ""
                                                         for _, ref in stage.references()})
    return out


def recipe_fingerprints(recipe: Recipe) -> dict[str, str]:
    """``{stage name: stage_fingerprint}`` for every stage, each including its inputs' fingerprints."""
    return {name: _digest(s) for name, s in recipe_settings(recipe).items()}


def changed_settings(stage: str, before: dict[str, Any] | None, now: dict[str, Any], limit: int = 4) -> str:
    """The fields that differ between a stage's recorded settings and the recipe's, as the override
    paths a user writes (``stages.student.schedule.batch_size: 4 -> 2``)."""
    if before is None:
        return "which fields is not recorded (the stage ran before manifests kept its settings)"

    def flat(d: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
        if isinstance(d, dict) and d:
            return {k: v for key, val in d.items() for k, v in flat(val, path + (str(key),)).items()}
        return {path: d}

    old, new = flat(before), flat(now)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        if key[0] == "upstream":
            out.append(f"input stage '{key[1]}' changed" if len(key) > 1 else "its inputs changed")
            continue
        name = ".".join(("stages", stage, *key[1:]) if key[0] == "stage" else key)
        out.append(f"{name}: {json.dumps(old.get(key, '<unset>'))} -> {json.dumps(new.get(key, '<unset>'))}")
    if not out:
        return "settings changed"
    return ", ".join(out[:limit]) + (f" and {len(out) - limit} more" if len(out) > limit else "")


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
        from ._console import console

        self.console = console()
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
        settings = recipe_settings(self.recipe)
        fingerprints = {n: _digest(v) for n, v in settings.items()}
        skip = self._refuse_or_skip(wanted, forced, settings, fingerprints)  # before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(self.run_dir / "recipe.yaml",
                              yaml.safe_dump(self.recipe.to_yaml_dict(), sort_keys=False))
        self.save_manifest()
        for stage in self.recipe.stages:
            if stage.name not in wanted:
                continue
            if stage.name in skip:
                if self.rank == 0:
                    self.console.print(f"[dim]skip {stage.name}: done, artifacts verified[/]")
                continue
            self._run_stage(stage, fingerprints[stage.name], settings[stage.name])
        return self.run_dir

    def _refuse_or_skip(self, wanted: set[str], forced: set[str], settings: dict[str, dict[str, Any]],
                        fingerprints: dict[str, str]) -> set[str]:
        """Every check that can refuse the command, made before it writes anything (a refused command
        leaves the run directory as it was: its recipe.yaml and manifest keep describing its artifacts).
        Returns the wanted stages that are done and verified (skipped).

        Refused: a finished stage that would be kept (skipped on ``--resume``, or an input of the
        selected stages) but ran with other settings, and an interrupted stage with saved checkpoints
        whose settings changed: resuming would mix two settings, restarting would delete its work.
        """
        needed: set[str] = set()  # what the selected stages read, transitively
        for stage in reversed(self.recipe.stages):
            if stage.name in wanted or stage.name in needed:
                needed.update(ref for _, ref in stage.references())
        skip: set[str] = set()
        for stage in self.recipe.stages:
            name, rec = stage.name, self.manifest["stages"][stage.name]
            status, recorded = rec.get("status"), rec.get("fingerprint")
            changed = recorded not in (None, fingerprints[name])
            if name not in wanted:
                if name in needed and status != "done":
                    raise UserError(f"stage '{name}' is needed by the selected stages but has not "
                                    f"finished in {self.run_dir}")
                if name in needed and changed:
                    raise UserError(f"stage '{name}' ran with different settings than the recipe now gives "
                                    f"({changed_settings(name, rec.get('settings'), settings[name])}) and the "
                                    f"selected stages read it; nothing was changed: re-run from it with "
                                    f"--from-stage {name}")
                continue
            if name in forced or not self.resume:
                continue
            if status == "done":
                self.verify(name)
                if changed:
                    raise UserError(f"stage '{name}' ran with different settings than the recipe now gives "
                                    f"({changed_settings(name, rec.get('settings'), settings[name])}); nothing "
                                    f"was changed: re-run it with --from-stage {name}, or leave out --resume "
                                    f"for a new run directory")
                skip.add(name)
            elif status in ("running", "failed") and recorded != fingerprints[name] and self._has_checkpoints(name):
                step = _saved_step(self.run_dir / name)
                at = f" at step {step}" if step is not None else ""
                raise UserError(f"stage '{name}' was interrupted{at} with different settings than the recipe "
                                f"now gives ({changed_settings(name, rec.get('settings'), settings[name])}); "
                                f"nothing was changed: resume with the settings it ran with, re-run it from "
                                f"step 0 with --from-stage {name} (deletes its checkpoints), or leave out "
                                f"--resume for a new run directory")
        return skip

    def _has_checkpoints(self, name: str) -> bool:
        d = self.run_dir / name / "checkpoints"
        return d.is_dir() and any(d.iterdir())

    def _run_stage(self, stage: StageConfig, fp: str, settings: dict[str, Any] | None = None) -> None:
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
            # an earlier attempt's: another command (--from-stage, or a stage that ran fresh since) asked for
            # that, or nothing is saved in it (_refuse_or_skip refuses a resume that would lose work)
            shutil.rmtree(stage_dir / "checkpoints")
        if self.resume and interrupted and self.rank == 0 and self._has_checkpoints(stage.name):
            step, steps = _saved_step(stage_dir), _planned_steps(stage)
            at = "its last checkpoint" if step is None else f"step {step}" + (f" of {steps}" if steps else "")
            self.console.print(f"resuming stage '{stage.name}' from {at}", highlight=False)
        _barrier(self.world_size)
        ctx = StageContext(name=stage.name, cfg=stage, recipe=self.recipe, run_dir=self.run_dir,
                           stage_dir=stage_dir, inputs=inputs,
                           all_stages={n: self.stage_input(n) for n, r in self.manifest["stages"].items()
                                       if r.get("status") == "done"},
                           resume=self.resume and interrupted, rank=self.rank, world_size=self.world_size,
                           local_rank=self.local_rank, device=_resolve_device(self.recipe.device, self.local_rank))
        # the settings of the attempt whose checkpoints the stage folder holds from now on
        rec.update(status="running", started=_now(), fingerprint=fp,
                   inputs={role: inp.name for role, inp in inputs.items()})
        if settings is not None:
            rec["settings"] = settings
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
            if isinstance(e, KeyboardInterrupt):  # the CLI's Ctrl-C line says where to pick it up
                e.compressdet_interrupted = Interrupted(stage.name, _saved_step(stage_dir), _planned_steps(stage),
                                                        self.run_dir)
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


@dataclass
class Interrupted:
    """Where a Ctrl-C stopped a run (attached to the ``KeyboardInterrupt`` as ``compressdet_interrupted``)."""

    stage: str
    step: int | None  # the last saved checkpoint's step; None: no checkpoint (or not a trainer's)
    steps: int | None  # the stage's schedule.steps
    run_dir: Path


def _saved_step(stage_dir: Path) -> int | None:
    """The step of ``stage_dir/checkpoints/last.pt`` (a trainer checkpoint), read without loading its
    tensors (``mmap``); None when there is none or it is not a trainer's."""
    p = Path(stage_dir) / "checkpoints" / "last.pt"
    if not p.is_file():
        return None
    try:
        import torch

        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        return int(state["step"])
    except Exception:  # noqa: BLE001 - a message detail: any unreadable file means "unknown"
        return None


def _planned_steps(stage: StageConfig) -> int | None:
    steps = getattr(getattr(stage, "schedule", None), "steps", None)
    return steps if isinstance(steps, int) else None


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
                     "model": (m.label + (f" (width {m.width})" if m.width else "")) if m else "-",
                     "status": status, "action": "skip (done)" if status == "done" else "run"})
    return rows


def check_data(recipe: Recipe, notes: list[str] | None = None) -> None:
    """Before any work (``recipe check``, ``run`` before its run directory exists): the recipe's classes
    and class_map against the categories of the data's annotation files.

    Raises:
        DataError: one line per mismatch, naming the recipe file and field and the annotation file.
    """
    from .data.checks import check_classes

    problems = check_classes(recipe.data, notes)
    if problems:
        pre = f"{recipe.source}: " if recipe.source else ""
        raise DataError("\n".join(one_line(pre + p) for p in problems))  # one line per problem


def run_recipe(recipe: Recipe, run_dir: Path | None = None, resume: bool = False, from_stage: str | None = None,
               only: str | None = None, runs_root: Path | str = "runs") -> Path:
    """Entry point of ``compressdet run``; returns the run directory."""
    check_data(recipe)
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
