"""``deploy.md`` and its mAP-vs-latency chart ``deploy.png``: every candidate, the chosen one and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_save_figure, atomic_write_text

__all__ = ["write_reports", "markdown", "chart", "CHART"]

CHART = "deploy.png"

_MARK = {"chosen": ("*", "tab:green"), "slower": ("o", "tab:blue"), "rejected": ("x", "tab:red")}


def chart(report: dict[str, Any], path: str | Path) -> Path:
    """Each measured candidate at (median latency, mAP); the tolerance as a dashed line, the chosen one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for r in report["candidates"]:
        lat = (r.get("latency") or {}).get("median_ms")
        if lat is None or r.get("map") is None:
            continue
        marker, color = _MARK.get(r.get("status", ""), ("o", "gray"))
        ax.scatter([lat], [r["map"]], marker=marker, color=color, s=120 if marker == "*" else 40,
                   label=r.get("status"))
        ax.annotate(f"{r['name']} ({r.get('precision', '?')})", (lat, r["map"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ref = report["reference"]["map"]
    ax.axhline(ref, color="gray", linewidth=0.8, label="PyTorch fp32")
    ax.axhline(ref - report["max_map_drop"], color="tab:red", linestyle="--", linewidth=0.8,
               label=f"tolerance (-{report['max_map_drop']})")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    h, w = report["image_size"]
    ax.set_xlabel(f"latency, batch 1, median (ms), {h}x{w}, {report['threads']} threads")
    ax.set_ylabel(f"{report['map_key']} on {report['split']} (%)")
    ax.set_title("deploy candidates: mAP vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(report: dict[str, Any]) -> str:
    h, w = report["image_size"]
    lines = ["# compressdet deploy", "", f"**{report['summary']}**", "",
             f"Model: stage `{report['model']['stage']}`" + (f" (INT8 graph of `{report['model']['quant_stage']}`)"
                                                             if report["model"].get("quant_stage") else "")
             + f", {h}x{w}, target {report['target']}, {report['cpu']}.",
             f"Accuracy: {report['map_key']} on the {report['split']} split, PyTorch fp32 "
             f"{report['reference']['map']:.2f}; a candidate more than {report['max_map_drop']} points below it is "
             "rejected. Latency: batch 1, median / p90 of "
             + (f"{report['runs']} runs over {report['rounds']} rounds, each candidate in fresh processes of its "
                "own, alternating" if report["timer"] == "isolated_process" else "CUDA events")
             + f", {report['threads']} threads.", "",
             "| candidate | runtime | setting | precision (read back) | median ms | p90 ms | mAP | drop | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["candidates"]:
        lat = r.get("latency") or {}
        prec = r.get("precision", "-")
        if r.get("inference_precision") and r.get("inference_precision") != prec:
            prec += f" (float parts {r['inference_precision']})"
        status = r.get("status", "")
        why = r.get("reason", "")
        lines.append(f"| {'**' + r['name'] + '**' if status == 'chosen' else r['name']} | {r.get('runtime', '-')} | "
                     f"{r.get('setting', '-')} | {prec} | {_f(lat.get('median_ms'))} | {_f(lat.get('p90_ms'))} | "
                     f"{_f(r.get('map'))} | {_f(r.get('map_drop'), '{:+.2f}')} | {status}: {why} |")
    lines += ["", f"![mAP vs latency]({CHART})", ""]
    if report.get("speedup_vs_best_exact_fp32") is not None:
        lines.append(f"Chosen vs the fastest exact fp32 candidate ({report['best_exact_fp32']}): "
                     f"{report['speedup_vs_best_exact_fp32']:.2f}x"
                     + (f"; vs OpenVINO's default precision: {report['speedup_vs_openvino_default']:.2f}x"
                        if report.get("speedup_vs_openvino_default") is not None else "") + ".")
    if report.get("artifact"):
        a = report["artifact"]
        lines.append(f"Run it: `compressdet predict SOURCE --model <this folder>` (runs `{a['file']}` on "
                     f"{a['runtime']}, {a['setting']}).")
    for n in report.get("notes", []):
        lines.append(f"Note: {n}")
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"md": out_dir / "deploy.md", "png": out_dir / CHART}
    chart(report, paths["png"])
    atomic_write_text(paths["md"], markdown(report))
    return paths
