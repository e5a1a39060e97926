"""Benchmarks as declarations (issue #42): a benchmark says *what* it compares, this runner does the rest.

Every accuracy benchmark of ``benchmarks/`` re-states the same program by hand: build a recipe per arm
and seed, run it through the CLI (resuming, recorded in the ledger), choose settings on ``val``, test
the chosen model once per seed, pair seeds into claims, write JSON / PNG / markdown. Here a benchmark
declares:

- :class:`Arm`: a name, the recipe stages it adds (a function of one setting of its ``grid``), and the
  arms it starts from (``parent``: the same seed's chosen model of that arm enters as a ``model_file``
  stage named ``parent``; ``teacher``: likewise, stage ``teacher``);
- :class:`Bench`: data, seeds, arms, the paired differences it claims, and the deploy settings (every
  arm's chosen seed-``seeds[0]`` model goes through a ``deploy`` stage at each size: the fastest runtime and
  precision within ``max_map_drop``, as ``compressdet deploy`` chooses).

:func:`run` then follows the evidence protocol (``_protocol.py``): each setting of an arm's grid is run
for every seed and chosen by its mean ``val`` mAP40 over the seeds (ties: the first listed); the chosen
model of each seed is tested once on ``test`` (cached by sha256); claims are per-seed differences with a
t interval. Runs are named by a location-free digest of their recipe (inputs by sha256), recorded in
the benchmark's ledger and looked up in other benchmarks' ledgers (``Bench.reuse``) by that name, so a
run another benchmark already made under the same recipe is not made again.

Why a separate deploy recipe, not a stage appended to the training run: the training recipe stays the
one other benchmarks name (its digest matches theirs). A float model enters the deploy recipe as a
``model_file``; a ``qat`` / ``ptq`` arm's INT8 graph lives in its own run, so its last stage is
replayed there from the same inputs and seed (byte-reproducible training: the same model).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _ledger import Ledger
from _protocol import best, claim, protocol_keys, run_digest, test_map

QUANT_KINDS = ("qat", "ptq")


@dataclass
class Arm:
    """One model of the benchmark. ``stages(setting)`` returns the recipe stages after the inputs (stage
    names ``parent`` / ``teacher`` are the inputs'); the last one is the model unless ``model_stage``."""

    name: str
    stages: Callable[[dict], list[dict]]
    chain: str = ""
    parent: str | None = None
    teacher: str | None = None
    grid: list[dict] = field(default_factory=lambda: [{}])
    seeds: list[int] | None = None  # None: the benchmark's; a teacher trained once: [0]
    model_stage: str | None = None
    deploy: bool = True
    # a hook for reuse: a whole recipe (with its name) instead of the default one, e.g. the teacher recipe
    # imitation_gain.make_teacher_recipe names, so another benchmark's ledger holds it
    recipe: Callable[[dict, int, dict[str, Path]], dict] | None = None
    tags: dict = field(default_factory=dict)  # what the benchmark reads back (direct student, baseline, ...)


@dataclass
class Bench:
    name: str
    preset: str
    data: dict
    seeds: list[int]
    arms: list[Arm]
    claims: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (a, b): test a - b, paired
    deploy_sizes: list[list[int]] = field(default_factory=list)
    deploy: dict = field(default_factory=dict)  # deploy stage fields (runs, rounds, threads, max_map_drop, ...)
    device: str = "cpu"
    reuse: list[Ledger] = field(default_factory=list)


def setting_key(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items())) or "-"


def _stage_name(arm: Arm, setting: dict) -> str:
    return arm.model_stage or arm.stages(setting)[-1]["name"]


def _inputs_stages(inputs: dict[str, Path]) -> list[dict]:
    from compressdet._io import sha256_file

    return [{"name": k, "kind": "model_file", "path": str(p), "sha256": sha256_file(p)} for k, p in inputs.items()]


def named(recipe: dict, prefix: str) -> dict:
    """``recipe`` named ``<prefix>-<digest>``: the digest of the recipe with input paths left out (inputs are
    pinned by sha256), so the name says what the run is, wherever its inputs sit."""
    key = {**recipe, "stages": [{k: v for k, v in s.items() if k != "path"} for s in recipe["stages"]]}
    return {**recipe, "name": f"{re.sub(r'[^A-Za-z0-9_.-]', '_', prefix)}-{run_digest(key)}"}


class Runner:
    """Runs a :class:`Bench` under ``work`` with ``ledger``; :meth:`run_all` returns the results dict."""

    def __init__(self, bench: Bench, work: Path, ledger: Ledger, log: Callable[[str], None] = print):
        self.b, self.work, self.ledger, self.log = bench, Path(work), ledger, log
        self.work.mkdir(parents=True, exist_ok=True)
        self.test_dir = ledger.test_dir or self.work / "test_eval"
        self.arms = {a.name: a for a in bench.arms}
        self.chosen: dict[str, dict] = {}  # arm -> chosen setting
        self.models: dict[str, dict[int, dict]] = {}  # arm -> seed -> run record of the chosen setting

    # ---------------------------------------------------------------- one recipe run
    def _run(self, recipe: dict) -> tuple[dict, Ledger]:
        """The CLI run of ``recipe`` (ig._run: resumes, records in the ledger), or a run of the same name
        another benchmark's ledger holds (then recorded in this one too)."""
        import imitation_gain as ig

        run_dir = self.work / "runs" / recipe["name"]
        if self.ledger.get(recipe["name"], run_dir) is None:  # (a ledger without root holds nothing)
            for other in self.b.reuse:
                if (man := other.get(recipe["name"], run_dir)) is not None:
                    self.log(f"{recipe['name']}: reused from {other.root}")
                    self.ledger.put(recipe["name"], run_dir, man)
                    if self.ledger.root is None:
                        return man, other
                    return self.ledger.get(recipe["name"], run_dir) or man, self.ledger
        return ig._run(recipe, self.work, self.ledger), self.ledger

    def _model_of(self, name: str, seed: int) -> Path:
        """The same seed's chosen model of arm ``name`` (an arm with fewer seeds, e.g. a teacher: its first)."""
        by = self.models[name]
        return by[seed]["model"] if seed in by else by[min(by)]["model"]

    def _inputs(self, arm: Arm, seed: int) -> dict[str, Path]:
        return {k: self._model_of(v, seed) for k, v in (("teacher", arm.teacher), ("parent", arm.parent)) if v}

    def recipe(self, arm: Arm, setting: dict, seed: int) -> dict:
        inputs = self._inputs(arm, seed)
        if arm.recipe is not None:
            return arm.recipe(setting, seed, inputs)
        return named({"seed": seed, "device": self.b.device, "data": self.b.data,
                      "stages": _inputs_stages(inputs) + arm.stages(setting)}, f"{arm.name}-s{seed}")

    def train(self, arm: Arm, setting: dict, seed: int) -> dict:
        """One run: ``{"run", "val" (metrics), "model" (float or int8 file), "kind", "float_model", "wall_s"}``."""
        import imitation_gain as ig

        recipe = self.recipe(arm, setting, seed)
        man, ledger = self._run(recipe)
        stage = _stage_name(arm, setting)
        rec = man["stages"][stage]
        quant = rec.get("kind") in QUANT_KINDS
        model = ig.model_file(self.work, man, stage, ledger, key="quantized" if quant else "model")
        float_model = self._inputs(arm, seed).get("parent") if quant else model
        return {"run": recipe["name"], "val": rec["metrics"], "model": model, "float_model": float_model,
                "kind": "int8" if quant else "torch", "setting": setting,
                "wall_s": sum(r.get("wall_time_s", 0.0) for r in man["stages"].values())}

    # ---------------------------------------------------------------- the protocol
    def select(self, arm: Arm) -> None:
        """Every setting of the grid on every seed; the chosen one has the best mean val mAP40."""
        seeds = arm.seeds or self.b.seeds
        runs = {setting_key(s): {seed: self.train(arm, s, seed) for seed in seeds} for s in arm.grid}
        val = {k: statistics.mean(r["val"]["map40"] for r in by.values()) for k, by in runs.items()}
        chosen = best(arm.grid, {str(s): val[setting_key(s)] for s in arm.grid})
        self.chosen[arm.name] = {"setting": chosen, "val_mean_by_setting": val}
        self.models[arm.name] = runs[setting_key(chosen)]
        self.log(f"{arm.name}: chosen {setting_key(chosen)} (mean val mAP40 {val[setting_key(chosen)]:.2f})")

    def test(self, arm: Arm) -> dict[int, dict]:
        """One test evaluation per seed of the chosen model (cached by its sha256)."""
        out = {}
        for seed, r in self.models[arm.name].items():
            out[seed] = test_map(r["model"], self.b.data, self.test_dir, kind=r["kind"])
        return out

    def deploy(self, arm: Arm) -> dict[str, dict]:
        """``{"HxW": deploy metrics}`` of the arm's chosen model of its first seed, at each size."""
        if not arm.deploy or not self.b.deploy_sizes:
            return {}
        seed = min(self.models[arm.name])
        setting = self.chosen[arm.name]["setting"]
        stage = _stage_name(arm, setting)
        own = arm.stages(setting)
        if next(s for s in own if s["name"] == stage)["kind"] in QUANT_KINDS:  # replay: its graph is in its run
            stages, src = _inputs_stages(self._inputs(arm, seed)) + own, stage
        else:
            stages, src = _inputs_stages({"model": self.models[arm.name][seed]["model"]}), "model"
        for hw in self.b.deploy_sizes:
            stages.append({"name": f"deploy-{hw[0]}x{hw[1]}", "kind": "deploy", "from": src, "image_size": list(hw),
                           "split": "test", **self.b.deploy})
        man, _ = self._run(named({"seed": seed, "device": self.b.device, "data": self.b.data, "stages": stages},
                                 f"deploy-{arm.name}-s{seed}"))
        return {f"{hw[0]}x{hw[1]}": man["stages"][f"deploy-{hw[0]}x{hw[1]}"]["metrics"] for hw in self.b.deploy_sizes}

    def run_all(self) -> dict:
        """Select, test and deploy every arm (in declaration order: parents first), then the claims."""
        t0 = time.perf_counter()
        arms = {}
        for arm in self.b.arms:
            self.select(arm)
            test = self.test(arm)
            seeds = sorted(test)
            arms[arm.name] = {
                "chain": arm.chain, "parent": arm.parent, "teacher": arm.teacher, "tags": arm.tags, "seeds": seeds,
                "chosen": self.chosen[arm.name]["setting"], "val_mean_by_setting": self.chosen[arm.name]["val_mean_by_setting"],
                "test_map40": {s: test[s]["map40"] for s in seeds}, "test_ap40": {s: test[s]["ap40"] for s in seeds},
                "runs": {s: self.models[arm.name][s]["run"] for s in seeds},
                "models": {s: _rel(self.models[arm.name][s]["model"]) for s in seeds},
                "size_model": str(self.models[arm.name][seeds[0]]["float_model"]),
                "train_minutes": sum(r["wall_s"] for r in self.models[arm.name].values()) / 60,
                "deploy": self.deploy(arm)}
        claims = {label: claim(arms[a]["test_map40"], arms[b]["test_map40"], self.b.seeds)
                  for label, (a, b) in self.b.claims.items()}
        return {"bench": self.b.name, "preset": self.b.preset, **protocol_keys(self.b.seeds), "arms": arms,
                "claims": claims, "minutes_this_invocation": (time.perf_counter() - t0) / 60,
                "ledger": {"path": _rel(self.ledger.root), "runs": self.ledger.entries()} if self.ledger.root else None}


def _rel(p) -> str:
    import imitation_gain as ig

    return ig.rel_to_root(Path(p))


def mean_ci(values: list[float]) -> tuple[float, list[float]]:
    """Mean and 95% t interval of per-seed values (one seed: an interval of zero width)."""
    from compressdet.eval.stats import mean_ci as _mean_ci

    return _mean_ci(values) if len(values) > 1 else (float(values[0]), [float(values[0])] * 2)


def plot_accuracy_latency(points: list[dict], front: list[str], path: Path, *, title: str) -> None:
    """mAP vs deployed latency: every point labelled (its CI as an error bar), the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressdet._io import atomic_save_figure

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    chains = sorted({p["chain"] for p in points})
    for p in points:
        c = f"C{chains.index(p['chain'])}"
        lo, hi = p["ci95"]
        ax.errorbar(p["latency_ms"], p["mean"], yerr=[[p["mean"] - lo], [hi - p["mean"]]], fmt="o", color=c,
                    ms=5, capsize=2, label=p["chain"] if p is next(q for q in points if q["chain"] == p["chain"]) else None)
        ax.annotate(f"{p['model']} ({p['backend']})", (p["latency_ms"], p["mean"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 3))
    on = sorted((p for p in points if p["model"] in front), key=lambda p: p["latency_ms"])
    if on:
        ax.step([p["latency_ms"] for p in on], [p["mean"] for p in on], where="post", color="k", lw=1, alpha=0.6,
                label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("deployed latency, ms (batch 1, log scale)")
    ax.set_ylabel("test mAP40 (mean of seeds, 95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path)
