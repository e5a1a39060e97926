"""The seed's results table (METHOD.md section 6) as markdown.

``| model | FLOPs | params | car E/M/H | ped E/M/H | cyc E/M/H | mAP |``, AP in percent with one
decimal, mAP the plain mean of the 9 APs. Extra columns (latency, size, ...) go after mAP.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import UserError
from .kitti_eval import CLASSES, LEVELS

__all__ = ["format_table", "format_row", "size_cells", "result_from_ap40", "TABLE_HEADER"]

_SHORT = {"car": "car", "pedestrian": "ped", "cyclist": "cyc"}
TABLE_HEADER = ("model", "FLOPs", "params", "car E/M/H", "ped E/M/H", "cyc E/M/H", "mAP")


def _metric_for(result: Mapping, metric: str | None) -> str:
    if metric is None:  # the seed's protocol reported 11-point AP; the official devkit 40-point
        return "ap11" if result.get("protocol") == "seed" else "ap40"
    if metric not in ("ap11", "ap40"):
        raise UserError(f"metric '{metric}': expected ap11 or ap40")
    return metric


def size_cells(summary: Mapping, *, params_digits: int = 3) -> tuple[str, str]:
    """The FLOPs and params cells from a :func:`~compressdet.models.model_summary`: backbone MACs (the
    seed's "FLOPs", METHOD.md section 6) and params with BN statistics, e.g. ``("5.238 G", "1.629 M")``."""
    return (f"{summary['macs']['backbone'] / 1e9:.3f} G",
            f"{summary['params_with_bn_stats']['total'] / 1e6:.{params_digits}f} M")


def result_from_ap40(ap40: Mapping) -> dict:
    """A stage's ``metrics["ap40"]`` (``{class: {level: AP}}``, AP a number or ``{"ap40", "ap11"}``)
    as the result shape :func:`format_table` reads, so reports build the table from the manifest."""
    def entry(v):
        return {"ap40": float(v["ap40"]), "ap11": float(v.get("ap11", 0.0))} if isinstance(v, Mapping) \
            else {"ap40": float(v), "ap11": 0.0}

    return {"protocol": "official", "ap": {c: {lvl: entry(v) for lvl, v in lv.items()} for c, lv in ap40.items()}}


def format_row(result: Mapping, *, model: str = "", flops: str = "", params: str = "",
               metric: str | None = None) -> list[str]:
    """Cells of one table row; a class missing from ``result`` shows as ``-``."""
    m = _metric_for(result, metric)
    cells = [model, flops, params]
    vals = []
    for c in CLASSES:
        per = result["ap"].get(c)
        if per is None:
            cells.append("-")
            continue
        v = [per[lvl][m] for lvl in LEVELS]
        vals.extend(v)
        cells.append("/".join(f"{x:.1f}" for x in v))
    cells.append(f"{sum(vals) / len(vals):.1f}" if vals else "-")
    return cells


def format_table(results: Mapping | Sequence[Mapping], *, models: str | Sequence[str] = "",
                 flops: str | Sequence[str] = "", params: str | Sequence[str] = "",
                 metrics: str | Sequence[str | None] | None = None,
                 extra: Mapping[str, object] | Sequence[Mapping[str, object]] | None = None) -> str:
    """Markdown table in the seed's format, one row per result.

    Args:
        results: one ``evaluate_kitti`` result or a list of them.
        models, flops, params: one string per row (or one for a single row), e.g. "0.5x-I", "1.5 G".
        metrics: "ap11" / "ap40" per row; default AP11 for ``protocol == "seed"``, else AP40.
        extra: per row, extra column name -> value, appended after mAP (union of keys, in order).

    Returns:
        The table as markdown text (header, separator, rows), newline-terminated.
    """
    rows = [results] if isinstance(results, Mapping) else list(results)
    n = len(rows)

    def per_row(x, name):
        if isinstance(x, (str, type(None))) or not isinstance(x, Sequence):
            return [x] * n
        if len(x) != n:
            raise UserError(f"format_table: {name} has {len(x)} entries for {n} rows")
        return list(x)

    models_l, flops_l, params_l = per_row(models, "models"), per_row(flops, "flops"), per_row(params, "params")
    metrics_l = per_row(metrics, "metrics")
    extras = [{}] * n if extra is None else ([extra] * n if isinstance(extra, Mapping) else list(extra))
    if len(extras) != n:
        raise UserError(f"format_table: extra has {len(extras)} entries for {n} rows")
    extra_cols: list[str] = []
    for e in extras:
        extra_cols += [k for k in e if k not in extra_cols]
    header = list(TABLE_HEADER) + extra_cols
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r, mo, fl, pa, me, ex in zip(rows, models_l, flops_l, params_l, metrics_l, extras):
        cells = format_row(r, model=str(mo or ""), flops=str(fl or ""), params=str(pa or ""), metric=me)
        cells += [str(ex.get(k, "")) for k in extra_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
