"""Bench report: the seed's table plus latency and per-stage deltas, as JSON, markdown, PNG and rich."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_save_figure, atomic_write_json, atomic_write_text
from ..conventions import KITTI_CLASSES
from ..eval.kitti_eval import LEVELS
from ..eval.table import size_cells

__all__ = ["table_rows", "markdown_report", "write_reports", "pareto_plot", "print_table", "COLUMNS", "COCO_COLUMNS",
           "columns"]

#: MACs: backbone multiply-accumulates (what is counted; FLOPs would be about 2x); param bytes: the
#: parameters' numel x element size (int8 rows: the graph's int8 weights); file size: the model file
COLUMNS = ["model", "MACs", "params", "car E/M/H", "ped E/M/H", "cyc E/M/H", "mAP", "param bytes", "file size",
           "latency b1", "delta vs ref"]
#: the table's columns when the metric is COCO AP (coco/yolo/voc data, or eval.metric: coco)
COCO_COLUMNS = ["model", "MACs", "params", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "param bytes",
                "file size", "latency b1", "delta vs ref"]
_COCO_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100")


#: KITTI's class names shortened in the seed's table headers
_SHORT = {"car": "car", "pedestrian": "ped", "cyclist": "cyc"}
#: the AP columns, whose headers carry the unit (every AP in a report is in %: ``report["ap_unit"]``)
_AP_HEADERS = {"mAP", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}


def report_classes(report: dict[str, Any]) -> list[str]:
    """The classes a KITTI-scored report's rows were evaluated on: the report's ``classes`` (the run's
    ``data.classes``), else those in the rows' results, else KITTI's three (reports made before)."""
    if report.get("classes"):
        return list(report["classes"])
    for r in report.get("rows", []):
        ap = (r.get("eval") or {}).get("ap")
        if isinstance(ap, dict) and ap:
            return list(ap)
    return list(KITTI_CLASSES)


def columns(report: dict[str, Any]) -> list[str]:
    """The table's columns: the seed's KITTI columns (an E/M/H column per class of the report), or
    COCO's when the report's metric is coco; AP headers end in ``(%)``."""
    if report.get("metric") == "coco":
        cols = list(COCO_COLUMNS)
    else:
        per_class = [f"{_SHORT.get(c, c)} E/M/H" for c in report_classes(report)]
        cols = [c for c in COLUMNS if not c.endswith(" E/M/H")]
        at = COLUMNS.index("car E/M/H")
        cols[at:at] = per_class
    return [f"{c} (%)" if c in _AP_HEADERS or c.endswith(" E/M/H") else c for c in cols]


def _coco_cells(ev: dict[str, Any] | None) -> list[str]:
    if not ev:
        return ["-"] * len(_COCO_KEYS)
    return ["-" if ev.get(k) is None else f"{ev[k]:.1f}" for k in _COCO_KEYS]


def _ap_cells(ev: dict[str, Any] | None, metric: str, classes: list[str]) -> list[str]:
    if not ev:
        return ["-"] * (len(classes) + 1)
    cells, vals = [], []
    for c in classes:
        per = ev["ap"].get(c)
        if per is None:
            cells.append("-")
            continue
        v = [per[lvl][metric] for lvl in LEVELS if lvl in per]
        vals.extend(v)
        cells.append("/".join(f"{x:.1f}" for x in v))
    return cells + [f"{sum(vals) / len(vals):.1f}" if vals else "-"]


def _lat(row: dict[str, Any]) -> str:
    parts = []
    for b, cells in row["latency"].items():
        c = cells.get("b1") if isinstance(cells, dict) else None
        if c and "median_ms" in c:
            star = "*" if row.get("fastest_backend") == b else ""
            parts.append(f"{b}{star} {c['median_ms']:.1f}/{c['p90_ms']:.1f}")
        elif isinstance(cells, dict) and "skipped" in cells:
            parts.append(f"{b} n/a")
    return ", ".join(parts) or "-"


def _delta(row: dict[str, Any]) -> str:
    d = row.get("delta")
    if not d:
        return "-"
    bits = [f"vs {d['vs']}:"]
    if d.get("map") is not None:
        bits.append(f"mAP {d['map']:+.1f}")
    if d.get("macs_backbone_pct"):
        bits.append(f"MACs {d['macs_backbone_pct']:+.0f}%")
    if d.get("speedup"):
        bits.append(f"x{d['speedup']:.2f} speed" + (f" ({d['speedup_backends']})" if d.get("speedup_backends") else ""))
    if d.get("param_bytes_pct") is not None:
        bits.append(f"param bytes {d['param_bytes_pct']:+.0f}%")
    return " ".join(bits)


def _param_bytes(row: dict[str, Any]) -> str:
    b = row.get("param_bytes")
    if b is None:
        return "-"
    return f"{b / 1e6:.3f} MB {row.get('weights_dtype', '')}".strip()


def _qat_vs_ptq_line(q: dict[str, Any]) -> str:
    def ms(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f} ms"

    def mp(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    gain = "n/a" if q.get("map_gain") is None else f"{q['map_gain']:+.2f}"
    return (f"{q['qat']} mAP {mp(q['map_qat'])} vs {q['ptq']} mAP {mp(q['map_ptq'])} (QAT gain {gain}); "
            f"latency ({q.get('latency_backend', 'best')}, b1) {ms(q['latency_qat_ms'])} vs {ms(q['latency_ptq_ms'])}"
            + ("" if q.get("same_float_source", True) else
               f" (float sources differ: {q.get('from_qat')} vs {q.get('from_ptq')})"))


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Cells per row, in :func:`columns` order (KITTI: AP per class as E/M/H; COCO: AP, AP50, AP75,
    AP small/medium/large, AR100; MACs = backbone multiply-accumulates)."""
    metric = "ap11" if report.get("protocol") == "seed" else "ap40"
    coco = report.get("metric") == "coco"
    classes = report_classes(report)
    out = []
    for r in report["rows"]:
        ap = _coco_cells(r.get("eval")) if coco else _ap_cells(r.get("eval"), metric, classes)
        out.append([r["label"], *size_cells(r), *ap,
                    _param_bytes(r), f"{r['file_bytes'] / 1e6:.2f} MB", _lat(r), _delta(r)])
    return out


def markdown_report(report: dict[str, Any]) -> str:
    """The markdown text of report.md."""
    cols = columns(report)
    ap_text = ("AP in %: COCO box AP@[.5:.95] (AP50, AP75 at one IoU; APs/APm/APl by area < 32^2, < 96^2, larger; "
               "AR100)" if report.get("metric") == "coco" else
               f"AP in %: KITTI {report.get('protocol')} protocol ({'AP11' if report.get('protocol') == 'seed' else 'AP40'})")
    lines = [f"# Benchmark: {report['run_dir']}", "",
             f"MACs = backbone multiply-accumulates at the input size (FLOPs ~ 2 x MACs); params include BN "
             "statistics and the head; param bytes = parameters x element size (BN statistics excluded; int8 rows: "
             "the int8 weight tensors of the QDQ graph); file size = the .pt model file (int8 rows: the INT8 ONNX "
             "file). "
             f"{ap_text}, {report.get('split', 'val')} split. Latency: median/p90 ms at batch 1 over {report['runs']} "
             f"runs after {report['warmup']} "
             f"warm-up, {report['threads']} threads, {report['device']}"
             + (", each model in its own process" if report.get("timer") == "isolated_process" else "")
             + "; * = fastest backend of the row.", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table_rows(report)]
    timer = ("each model on each CPU backend timed in fresh processes of its own, alternating over "
             f"{report.get('rounds', 1)} rounds" if report.get("timer") == "isolated_process" else "one process")
    lines += ["", "## Latency per backend and batch size (median / p90 ms)", "",
              f"Timer: {timer}; TensorRT with CUDA events. precision = what the backend really computed in (read "
              "back from the runtime: OpenVINO's default is bf16 on CPUs with AVX512-BF16/AMX); max |diff| = largest "
              "difference of its raw head output from PyTorch fp32 on one image; speed-up = the fp32 baseline model "
              "(first stage of the row's 'from' chain) on the same backend (int8 backends: on its float one) over "
              "this; * = the row's fastest backend at batch 1.", "",
              "| model | backend | precision | max \\|diff\\| vs PyTorch fp32 | "
              + " | ".join(f"batch {b}" for b in report["batch_sizes"]) + " | speed-up vs baseline |",
              "|---|---|---|---|" + "---|" * len(report["batch_sizes"]) + "---|"]
    for r in report["rows"]:
        for b, cells in r["latency"].items():
            info = (r.get("backends") or {}).get(b, {})
            prec = info.get("precision", "-")
            if info.get("inference_precision") and info["inference_precision"] != prec:
                prec += f" ({info['inference_precision']} elsewhere)"
            diff = info.get("max_abs_diff_vs_torch_fp32")
            diff_s = "-" if diff is None else f"{diff:.3g}"
            name = f"{b} *" if r.get("fastest_backend") == b else b
            sp = (r.get("speedup_vs_baseline") or {}).get(b)
            sp_s = f"x{sp['speedup']:.2f} vs {sp['vs']} ({sp['vs_backend']})" if sp else "-"
            if "skipped" in cells:
                skipped = " | ".join(f"n/a: {cells['skipped']}" for _ in report["batch_sizes"])
                lines.append(f"| {r['label']} | {name} | {prec} | {diff_s} | {skipped} | - |")
                continue
            vals = []
            for bs in report["batch_sizes"]:
                c = cells.get(f"b{bs}", {})
                vals.append(f"{c['median_ms']:.2f} / {c['p90_ms']:.2f}" if "median_ms" in c else f"n/a: {c.get('skipped', '-')}")
            lines.append(f"| {r['label']} | {name} | {prec} | {diff_s} | " + " | ".join(vals) + f" | {sp_s} |")
    q = report.get("qat_vs_ptq")
    if q:
        lines += ["", f"**QAT vs PTQ**: {_qat_vs_ptq_line(q)}."]
    quant = [r for r in report["rows"] if r.get("float_source")]
    if quant:
        lines += ["", "Quantized stages (" + ", ".join(f"{r['label']} from {r['float_source']}" for r in quant)
                  + "): MACs/params are the float source's (the same network, weights stored as int8: see the "
                  "param bytes column); file size is the INT8 ONNX file; ort-int8 runs the stage's own QDQ graph and torch "
                  "its quantized .pt2 program; delta is vs the float source."]
    if report.get("cuda_device"):
        lines += ["", f"TensorRT {report.get('tensorrt')} on {report['cuda_device']}: latency timed with CUDA events "
                  "(input resident on the GPU); its mAP per row is in report.json `eval_by_backend`."]
    if report.get("notes"):
        lines += ["", "Notes:", *(f"- {n}" for n in report["notes"])]
    lines += ["", "![mAP vs latency](pareto.png)", ""]
    return "\n".join(lines)


def pareto_plot(report: dict[str, Any], path: str | Path) -> Path:
    """mAP (or, without val, backbone MACs) against batch-1 latency; the Pareto front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runner import best_latency, row_map

    pts = []
    for r in report["rows"]:
        lat = best_latency(r)[1]
        m = row_map(r, report.get("protocol", "official"))
        y = m if m is not None else r["macs"]["backbone"] / 1e9
        if lat is not None:
            pts.append((lat, y, r["label"]))
    has_map = any(row_map(r, report.get("protocol", "official")) is not None for r in report["rows"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for x, y, name in pts:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front, best = [], None
    for x, y, _ in sorted(pts):  # higher mAP at lower latency is better
        if has_map and (best is None or y > best):
            front.append((x, y))
            best = y
    if len(front) > 1:
        ax.plot(*zip(*front), linestyle="--", color="gray", label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("latency, batch 1, median (ms)")
    ax.set_ylabel("mAP (%)" if has_map else "backbone GMACs (no val)")
    ax.set_title("mAP vs latency" if has_map else "MACs vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def write_reports(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """report.json, report.md and pareto.png in ``out_dir`` (each written atomically)."""
    out_dir = Path(out_dir)
    return {"json": atomic_write_json(out_dir / "report.json", report),
            "md": atomic_write_text(out_dir / "report.md", markdown_report(report)),
            "png": pareto_plot(report, out_dir / "pareto.png")}


def print_table(report: dict[str, Any], console: Any = None) -> None:
    """The report table on the terminal (rich)."""
    from rich.table import Table

    from .._console import console as make_console
    from .._console import print_whole

    # piped output (make demo, CI logs) gets the table whole instead of rich's 80-column default
    console = console or make_console()
    t = Table(title=f"compressdet bench: {report['run_dir']}")
    for c in columns(report):
        t.add_column(c, overflow="fold")
    for row in table_rows(report):
        t.add_row(*row)
    print_whole(console, t)
    q = report.get("qat_vs_ptq")
    if q:
        console.print(f"QAT vs PTQ: {_qat_vs_ptq_line(q)}", highlight=False, markup=False)
