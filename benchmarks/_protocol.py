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
from pathlib import Path

SELECTION_SPLIT, REPORT_SPLIT = "val", "test"


def protocol_keys(seeds: list[int]) -> dict:
    return {"selection_split": SELECTION_SPLIT, "report_split": REPORT_SPLIT, "seeds": list(seeds)}


def claim(a: dict | list, b: dict | list, seeds: list[int]) -> dict:
    """``{"per_seed", "mean", "ci95", "significant", "seeds"}`` of ``a - b`` (paired by seed)."""
    from compressdet.eval.stats import paired_difference

    if isinstance(a, list):
        a, b = dict(zip(seeds, a, strict=True)), dict(zip(seeds, b, strict=True))
    return paired_difference(a, b, seeds=seeds)


def test_map(model_file: str | Path, data: dict, cache_dir: Path, *, split: str = REPORT_SPLIT,
             max_images: int | None = None) -> dict:
    """KITTI AP of a model file on ``split`` (default: the whole test split), cached by the model's
    sha256 + the data settings, so a resumed benchmark never re-evaluates and never re-selects.

    Returns ``{"map40", "map11", "ap40": {cls: {level: ap40}}, "images", "split", "model_sha256"}``.
    """
    import torch

    from compressdet._io import atomic_write_json, sha256_file
    from compressdet.models import load_model
    from compressdet.quant._eval import evaluate_head_fn, torch_head_fn
    from compressdet.recipe import DataConfig, EvalConfig

    digest = sha256_file(model_file)
    key = hashlib.sha256(json.dumps({"m": digest, "d": data, "s": split, "n": max_images},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{split}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, _ = load_model(model_file)
    model.eval()
    data_cfg = DataConfig(**data)
    with torch.no_grad():
        res = evaluate_head_fn(torch_head_fn(model), data_cfg, split=split,
                               eval_cfg=EvalConfig(max_images=max_images, batch_size=16),
                               num_classes=int(getattr(model, "num_classes", len(data_cfg.classes))))
    images = len(res.get("per_image", {})) if "per_image" in res else None
    out = {"map40": float(res["map40"]), "map11": float(res["map11"]),
           "ap40": {c: {lvl: float(v["ap40"]) for lvl, v in lv.items()} for c, lv in res["ap"].items()},
           "images": images, "split": split, "model_sha256": digest}
    atomic_write_json(path, out)
    return out


def plot_learning_curves(curves: dict[str, dict[int, list[tuple[int, float]]]], path: Path, *, title: str,
                         metric: str = "val mAP40") -> None:
    """One line per (arm, seed): ``curves[arm][seed] = [(step, value), ...]``; one colour per arm,
    one line style per seed, so a reader sees whether a gap closes or holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def history(metrics: dict, key: str = "map40") -> list[tuple[int, float]]:
    """(step, value) pairs of a train stage's recorded val evaluations."""
    return [(int(h["step"]), float(h[key])) for h in (metrics.get("eval_history") or []) if h.get(key) is not None]
