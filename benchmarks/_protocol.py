"""The evidence protocol every accuracy benchmark follows (issue "Evidence that survives review").

- everything (checkpoints, weights, lr, settings; every arm alike) is chosen on ``val``;
- every reported number is measured once, on the whole ``test`` split, on the final chosen model;
- arms are paired by seed; claims are per-seed differences with a t interval
  (:mod:`compressdet.eval.stats`), "not significant" when it holds 0.

This module holds the parts the benchmarks share: the cached test-split evaluation of a model
file, the results-JSON protocol keys, and the learning-curve plot.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SELECTION_SPLIT, REPORT_SPLIT = "val", "test"
ROOT = Path(__file__).resolve().parents[1]


def _portable(obj, root: Path):
    if isinstance(obj, dict):
        return {k: _portable(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_portable(v, root) for v in obj]
    if isinstance(obj, (str, Path)) and Path(obj).is_absolute() and Path(obj).is_relative_to(root.parent):
        return os.path.relpath(obj, root)  # the checkout and ../shared sit side by side everywhere
    return obj


def run_digest(obj, root: Path = ROOT) -> str:
    """The 12-hex key that names a benchmark run. It names what the run is, not where this checkout
    sits: absolute paths inside the checkout's parent (the repository, ``../shared``) enter relative
    to the repository, so the ledger a clone in ``/check/work/main`` reads is the one
    ``/work/main`` wrote."""
    return hashlib.sha256(json.dumps(_portable(obj, root), sort_keys=True, default=str).encode()).hexdigest()[:12]


def protocol_keys(seeds: list[int]) -> dict:
    return {"selection_split": SELECTION_SPLIT, "report_split": REPORT_SPLIT, "seeds": list(seeds)}


def claim(a: dict | list, b: dict | list, seeds: list[int]) -> dict:
    """``{"per_seed", "mean", "ci95", "significant", "seeds"}`` of ``a - b`` (paired by seed)."""
    from compressdet.eval.stats import paired_difference

    if isinstance(a, list):
        a, b = dict(zip(seeds, a, strict=True)), dict(zip(seeds, b, strict=True))
    return paired_difference(a, b, seeds=seeds)


def test_map(model_file: str | Path, data: dict, cache_dir: Path, *, split: str = REPORT_SPLIT,
             max_images: int | None = None, kind: str = "torch", float_model: str | Path | None = None,
             model_sha256: str | None = None) -> dict:
    """KITTI AP of a model file on ``split`` (default: the whole test split), cached by the file's
    sha256 + the data settings, so a resumed benchmark never re-evaluates and never re-selects.

    ``kind``: ``"torch"`` (a ``save_model`` file of any family), ``"int8"`` (a quant stage's ``quantized.pt2``,
    the PyTorch int8 program) or ``"ort"`` (an ONNX graph under ONNX Runtime, CPU). A non-ShuffleDet
    family's raw outputs are decoded by its own postprocessor: the model file's, or for ``ort``
    ``float_model``'s (the float model file the graph was exported or quantized from).

    ``model_sha256``: the file's recorded sha256, for a ledger run whose bytes are not on this machine:
    the cached evaluation is found by it; without one (and without the file) ``FileNotFoundError``.

    Returns ``{"map40", "map11", "ap40": {cls: {level: ap40}}, "images", "split", "model_sha256", "kind"}``.
    """
    import torch

    from compressdet._io import atomic_write_json, sha256_file
    from compressdet.quant._eval import evaluate_head_fn, ort_head_fn, torch_head_fn
    from compressdet.recipe import DataConfig, EvalConfig

    digest = model_sha256 or sha256_file(model_file)
    spec = {"m": digest, "d": data, "s": split, "n": max_images, "k": kind}
    if float_model is not None:
        spec["f"] = sha256_file(float_model)
    key = hashlib.sha256(json.dumps(_portable(spec, ROOT), sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{split}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if not Path(model_file).is_file():
        raise FileNotFoundError(f"{model_file}: not on this machine, and no {split} evaluation of sha256 "
                                f"{digest[:12]} is cached in {cache_dir}")
    data_cfg = DataConfig(**data)
    num_classes = len(data_cfg.classes)
    family_model = None  # a non-ShuffleDet family decodes with its own postprocessor (detector contract)
    if kind == "torch":
        from compressdet.models import load_model

        model, _ = load_model(model_file)
        model.eval()
        num_classes = int(getattr(model, "num_classes", num_classes))
        if getattr(model, "family", "shuffledet") != "shuffledet":
            family_model = model

            def head(x):  # every raw output (torch_head_fn keeps the first of a tuple)
                with torch.no_grad():
                    return model(x)
        else:
            head = torch_head_fn(model)
    elif kind == "int8":  # exported with a batch-1 example: fed one image at a time
        one = torch_head_fn(torch.export.load(str(model_file)).module())

        def head(x):
            return torch.cat([one(x[i:i + 1]) for i in range(x.shape[0])], 0)
    elif kind == "ort":
        from compressdet.export.runtime import ort_session

        head = ort_head_fn(ort_session(str(model_file)))
        if float_model is not None:
            from compressdet.models import load_model

            fm, _ = load_model(float_model)
            if getattr(fm, "family", "shuffledet") != "shuffledet":
                family_model = fm.eval()
    else:
        raise ValueError(f"test_map: unknown kind {kind!r}")
    with torch.no_grad():
        res = evaluate_head_fn(head, data_cfg, split=split, model=family_model,
                               eval_cfg=EvalConfig(max_images=max_images, batch_size=16), num_classes=num_classes)
    images = res.get("images")  # how many images the number is over (the whole split unless max_images)
    out = {"map40": float(res["map40"]), "map11": float(res["map11"]),
           "ap40": {c: {lvl: float(v["ap40"]) for lvl, v in lv.items()} for c, lv in res["ap"].items()},
           "images": images, "split": split, "model_sha256": digest, "kind": kind}
    atomic_write_json(path, out)
    return out


def best(options: list, scores: dict):
    """The option with the best val score (``scores[str(option)]``); ties go to the first listed
    (the seed's default first)."""
    return max(options, key=lambda o: (scores[str(o)], -options.index(o)))


def chosen_line(chosen: dict, sweeps: dict) -> str:
    """``arm: setting=value (val: option score, ...)`` for a report."""
    parts = []
    for arm, c in chosen.items():
        tried = "; ".join(f"{k} " + ", ".join(f"{o}: {v:.2f}" for o, v in opts.items())
                          for k, opts in (sweeps.get(arm) or {}).items())
        parts.append(f"{arm}: {c}" + (f" (val mAP40 {tried})" if tried else ""))
    return "; ".join(parts)


def plot_learning_curves(curves: dict[str, dict[int, list[tuple[int, float]]]], path: Path, *, title: str,
                         metric: str = "val mAP40") -> None:
    """One line per (arm, seed): ``curves[arm][seed] = [(step, value), ...]``; one colour per arm,
    one line style per seed, so a reader sees whether a gap closes or holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressdet._io import atomic_save_figure

    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, (arm, by_seed) in enumerate(curves.items()):
        colour = f"C{i}"
        for j, (_seed, pts) in enumerate(sorted(by_seed.items())):
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, styles[j % len(styles)], color=colour, marker="o", ms=3,
                    label=f"{arm}" if j == 0 else None, alpha=0.9)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(title + "\n(one colour per arm; solid / dashed / dotted: seeds in order)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path)


def history(metrics: dict, key: str = "map40") -> list[tuple[int, float]]:
    """(step, value) pairs of a train stage's recorded val evaluations."""
    return [(int(h["step"]), float(h[key])) for h in (metrics.get("eval_history") or []) if h.get(key) is not None]


def export_fast_fp32(model, path: Path, hw) -> dict:
    """The fastest exact fp32 ONNX graph the exporter makes (``export_onnx`` with its default
    ``fp32_rewrites``, verified against the model in ORT); returns the exporter's info (its
    ``fp32_rewrites``: what was applied)."""
    from compressdet.export._onnx import export_onnx

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(model, path, image_size=tuple(hw), fp32_rewrites=True, log=lambda *_: None)


def isolated_ms(graphs: dict[str, Path], cache_dir: Path, *, runs: int, threads: int,
                rounds: int = 3) -> dict[str, dict]:
    """``compare_onnx_isolated`` (each graph in a process of its own, alternating over ``rounds``; ORT's
    default ORT_ENABLE_ALL), cached by the graphs' sha256 + runs + threads (+ rounds when not 3) so a
    resumed benchmark does not re-time."""
    from compressdet._io import atomic_write_json, sha256_file
    from compressdet.bench.latency import compare_onnx_isolated

    spec = {k: sha256_file(v) for k, v in sorted(graphs.items())} | {"_r": runs, "_t": threads}
    if rounds != 3:
        spec["_rounds"] = rounds
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"latency-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = compare_onnx_isolated({k: str(v) for k, v in graphs.items()}, runs=runs, threads=threads, rounds=rounds)
    atomic_write_json(path, out)
    return out
