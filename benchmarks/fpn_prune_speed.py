"""Pruning the FPN families for CPU speed: allocation and channel rounding at one MACs budget.

For each FPN student (default the MobileNetV2 x0.5 ones, what ``families.py`` and
``distill_methods.py`` train) with random weights and randomised BatchNorm statistics (latency does
not depend on the values), ``compressdet.prune.fpn.prune_fpn_detector`` cuts the backbone (body +
FPN laterals) to ``--macs`` of its MACs with one ratio for every channel group (``uniform``) and with
the latency allocation (``latency``: each group's ratio scaled by the latency proxy it saves per MAC,
one trial cut per group; what ``allocation: latency`` does in a prune stage), each with the kept
channels of every group a multiple of 8 and of 16 (``round_to``; ``uniform-x16`` and so on), and, for
RetinaNet, with a fraction of its head towers' channels cut too (``prune_head``, ``--head``). The
unpruned and the pruned networks are exported as the fastest exact fp32 graph and as the ``ptq``
stage's INT8 graph, and every graph is timed in processes of its own (``_protocol.isolated_ms``) at
the cpu presets' size and the seed's. It chose the prune stage's FPN default of kept channels a
multiple of 16, and found the latency allocation no better than one uniform ratio there (docs/pruning.md);
accuracy after the fine-tune is not measured here.

    python benchmarks/fpn_prune_speed.py                  # ~15 min on 2 cores; nothing else may run
    python benchmarks/fpn_prune_speed.py --preset smoke   # plumbing only

Writes ``fpn_prune_speed.{json,md}`` into ``--results`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from compressdet._io import atomic_write_json, atomic_write_text  # noqa: E402
from compressdet.pipeline import cpu_platform  # noqa: E402

ROWS = ("fcos-mnv2", "retinanet-mnv2", "fcos", "retinanet")  # fpn_speed.STUDENTS rows
ALLOCATIONS = ("uniform", "latency")
PRESETS = {"full": {"sizes": [(192, 624), (384, 1248)], "runs": 60, "rounds": 3, "threads": 2, "int8": True},
           "smoke": {"sizes": [(64, 192)], "runs": 3, "rounds": 1, "threads": 1, "int8": False}}


def _size(text: str) -> tuple[int, int]:
    from fpn_speed import _size as size

    return size(text)


def pruned_models(row: str, hw: tuple[int, int], macs: float, round_to: list[int], head: list[float] = ()
                  ) -> dict[str, tuple[torch.nn.Module, dict]]:
    """``{"unpruned" | "<allocation>-x<round_to>" | "latency-x<round_to>-head<ratio>": (model, prune
    record)}`` for one row, pruned at the prune stage's trace size for ``hw``
    (``stages.prune.example_input_size``); the head variants (``prune_head``) only where the head can
    be cut (no GroupNorm towers: RetinaNet) and at the largest ``round_to``."""
    from fpn_speed import _model

    from compressdet.prune.fpn import prune_fpn_detector
    from compressdet.stages.prune import example_input_size

    base, _ = _model(row, hw, None)
    out = {"unpruned": (base, {})}
    for r in round_to:
        for alloc in ALLOCATIONS:
            m = copy.deepcopy(base)
            rec = prune_fpn_detector(m, example_input_size(hw), target_macs=macs, allocation=alloc, round_to=r)
            out[f"{alloc}-x{r}"] = (m.eval(), rec)
    if not any(isinstance(mod, torch.nn.GroupNorm) for mod in base.det.head.modules()):
        for h in head:
            m = copy.deepcopy(base)
            rec = prune_fpn_detector(m, example_input_size(hw), target_macs=macs, allocation="latency",
                                     round_to=max(round_to), head_ratio=h)
            out[f"latency-x{max(round_to)}-head{h:g}"] = (m.eval(), rec)
    return out


def measure(args: argparse.Namespace) -> dict:
    from _protocol import export_fast_fp32, isolated_ms
    from fpn_speed import STUDENTS, _int8
    from quant import _random_inputs

    from compressdet.models import model_summary

    out = {"command": " ".join(["python benchmarks/fpn_prune_speed.py", *args.argv]), "preset": args.preset,
           "machine": cpu_platform(), "threads": args.threads, "batch": 1,
           "target_backbone_macs": args.macs, "round_to": args.round_to,
           "head_ratios": args.head,
           "timer": {"protocol": "isolated_process", "runs": args.runs, "rounds": args.rounds},
           "weights": "random init, BatchNorm statistics randomised", "rows": {}}
    for row in args.rows:
        entry: dict = {"student": STUDENTS[row], "sizes": {}}
        for hw in args.sizes:
            tag = f"{hw[0]}x{hw[1]}"
            t0 = time.time()
            models = pruned_models(row, hw, args.macs, args.round_to, args.head)
            d = args.work / f"{row}-{tag}"
            graphs: dict[str, Path] = {}
            cells: dict[str, dict] = {}
            calib = [torch.from_numpy(c) for c in _random_inputs(*hw)[1]]
            for name, (m, rec) in models.items():
                export_fast_fp32(m, d / f"{name}.fp32.onnx", hw)
                graphs[f"{name}/fp32"] = d / f"{name}.fp32.onnx"
                if args.int8:
                    _int8(m, calib, d / f"{name}.int8.onnx")
                    graphs[f"{name}/int8"] = d / f"{name}.int8.onnx"
                s = model_summary(m, hw)
                cells[name] = {"macs": s["macs"], "params": s["params"]["total"],
                               **({"ratio": rec["ratio"], "weights": rec.get("weights")} if rec else {})}
            built = time.time() - t0
            ms = isolated_ms(graphs, args.work / "latency", runs=args.runs, threads=args.threads, rounds=args.rounds)
            base_macs = cells["unpruned"]["macs"]
            for name, c in cells.items():
                c["backbone_macs_ratio"] = c["macs"]["backbone"] / base_macs["backbone"]
                c["total_macs_ratio"] = c["macs"]["total"] / base_macs["total"]
                for kind in ("fp32", "int8") if args.int8 else ("fp32",):
                    t = ms[f"{name}/{kind}"]["median_ms"]
                    c[f"{kind}_ms"] = t
                    c[f"{kind}_speedup"] = ms[f"unpruned/{kind}"]["median_ms"] / t
            entry["sizes"][tag] = {"models": cells, "latency": ms}
            line = ", ".join(f"{n} fp32 x{c['fp32_speedup']:.2f}" + (f" int8 x{c['int8_speedup']:.2f}" if args.int8 else "")
                             for n, c in cells.items() if n != "unpruned")
            print(f"[{row} {tag}] {line}; built in {built:.0f}s", flush=True)
        out["rows"][row] = entry
    return out


def render_md(r: dict) -> str:
    int8 = any("int8_ms" in c for e in r["rows"].values() for s in e["sizes"].values() for c in s["models"].values())
    heads = any("-head" in name for e in r["rows"].values() for s in e["sizes"].values() for name in s["models"])
    n, h = max(r.get("round_to") or [16]), (r.get("head_ratios") or [0.25])[0]
    head = "| row | student | input | allocation | backbone MACs | total MACs | fp32 ms | fp32 speed-up |"
    lines = [f"ORT CPU latency, batch 1, {r['threads']} thread(s), {r['machine']}, each graph in processes of its "
             f"own, median of {r['timer']['runs']} runs x {r['timer']['rounds']} rounds; {r['weights']}; backbone "
             f"(body + FPN) MACs target {r['target_backbone_macs']}; `uniform-x{n}`: one ratio for every group, kept "
             f"channels a multiple of {n}; " + (f"`-head{h:g}`: that fraction of the head towers' channels cut too "
                                                "(`prune_head`); " if heads else "")
             + "speed-up vs the unpruned graph of the same kind.",
             "", head + (" int8 ms | int8 speed-up |" if int8 else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if int8 else "")]
    for row, e in r["rows"].items():
        for tag, s in e["sizes"].items():
            for name, c in s["models"].items():
                cell = (f"| {row} | {e['student']} | {tag} | {name} | {c['backbone_macs_ratio']:.3f} | "
                        f"{c['total_macs_ratio']:.3f} | {c['fp32_ms']:.2f} | x{c['fp32_speedup']:.2f} |")
                if int8:
                    cell += f" {c['int8_ms']:.2f} | x{c['int8_speedup']:.2f} |"
                lines.append(cell)
    lines += ["", f"`{r['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS[:2]))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--macs", type=float, default=0.6, help="backbone MACs kept (the prune stage's default target)")
    ap.add_argument("--round-to", type=int, nargs="+", default=[8, 16], help="kept channels per group a multiple "
                    "of this; one pruned pair per value (the prune stage's FPN default: 16)")
    ap.add_argument("--head", type=float, nargs="*", default=[0.25, 0.5], help="prune_head ratios of the extra "
                    "head-pruned variants (RetinaNet; none: --head with no value)")
    ap.add_argument("--sizes", nargs="+", type=_size, metavar="HxW", help="input sizes (default: the preset's)")
    ap.add_argument("--work", type=Path, help="graphs and timing cache (default benchmarks/.fpn_prune_speed/<preset>)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not 0 < args.macs < 1:
        ap.error(f"--macs {args.macs}: expected a fraction in (0, 1)")
    if any(not 0 < h < 0.9 for h in args.head):
        ap.error(f"--head {args.head}: expected fractions in (0, 0.9)")
    if min(args.round_to) < 1:
        ap.error(f"--round-to {args.round_to}: expected positive channel counts")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.work = args.work or ROOT / "benchmarks" / ".fpn_prune_speed" / args.preset
    torch.set_num_threads(args.threads)
    r = measure(args)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "fpn_prune_speed.json", r)
    atomic_write_text(args.results / "fpn_prune_speed.md", "# FPN families: pruning allocation vs latency\n\n"
                      + render_md(r))
    print(f"wrote {args.results / 'fpn_prune_speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
