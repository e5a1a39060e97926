"""The results tables of README and of the docs site (``docs/results/*.md`` and any other docs page),
generated from the results JSON files (never typed by hand).

Each table sits in a page between two markers naming its JSON file (and, after a colon, a second view
of the same file: ``imitation_gain.json:headline`` is README's table in the seed's format)::

    <!-- results: imitation_gain.json -->
    ...generated...
    <!-- /results -->

``python benchmarks/readme_tables.py`` rewrites every marked block of README.md and docs/**/*.md from
``benchmarks/results``; ``--check`` exits 1 (naming the page and block) when a page and the JSON files
disagree, which is what ``tests/test_readme_tables.py`` runs. A JSON file that is missing gives a block
saying so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.]+(?::\w+)?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
LEVELS = ("easy", "moderate", "hard")


def _f(v, nd: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def _claim(c: dict, unit: str = "mAP") -> str:
    from compressdet.eval.stats import describe

    return describe(c, unit)


def _ap_cells(ap: dict) -> str:
    return " | ".join("/".join(f"{ap[c][lvl]:.1f}" for lvl in LEVELS) for c in ("car", "pedestrian", "cyclist"))


# --------------------------------------------------------------------------------------------
def imitation_gain(r: dict) -> str:
    if "report_split" not in r:
        m = r["map40"]
        rows = ["| model | val mAP40 per seed |", "|---|---|", f"| 1x teacher | {m['1x']:.2f} |"]
        rows += [f"| {k} | {', '.join(f'{x:.2f}' for x in v)} |" for k, v in m.items() if k != "1x"]
        return ("**Pre-protocol result, withdrawn as evidence**: selected (weight sweep, checkpoints) and reported on "
                "the same val images; layouts shared between train and val; students saw "
                f"{r['steps']['student'] * r['steps']['batch'] / r['data']['train_images']:.1f} passes.\n\n"
                + "\n".join(rows) + "\n")
    seeds = r["seeds"]
    d = r["data"]
    lines = [f"`{r['command']}`: SynthKITTI leak-free splits, {d['train_images']:,} train / {d['val_images']:,} val "
             f"(every selection) / {d['test_images']:,} test (reported once), {d['image_size'][0]}x{d['image_size'][1]}, "
             f"batch {r['steps']['batch']}; teacher {r['steps']['teacher']:,} steps, each student "
             f"{r['steps']['student']:,} steps ({r['plan']['student_passes']:.1f} passes); seeds {seeds}.", "",
             "| model | chosen on val | test mAP40 per seed | mean |", "|---|---|---|---|",
             f"| 1x teacher | best checkpoint | | {r['map40']['1x']:.2f} |"]
    for arm, label in (("0.25x", "0.25x"), ("0.25x-I", "0.25x-I (teacher)"),
                       ("0.25x-I-random", "0.25x-I, untrained frozen 1x (control)")):
        c = r["chosen"][arm]
        chosen = f"lr {c['lr']}" + (f", weight {c['weight']}" if arm != "0.25x" else "")
        v = r["map40"][arm]
        lines.append(f"| {label} | {chosen} | {', '.join(f'{x:.2f}' for x in v)} | {sum(v) / len(v):.2f} |")
    lines += ["", f"- imitation gain (0.25x-I - 0.25x): {_claim(r['gain'])}",
              f"- control (random-teacher imitation - 0.25x): {_claim(r['control'])}",
              f"- knowledge (0.25x-I - control): {_claim(r['knowledge_vs_random_teacher'])}",
              f"- teacher gap: {r['teacher_gap']:.2f} mAP; student minutes {r['minutes']:.1f}, teacher minutes "
              f"{r['teacher_minutes']:.1f}",
              "- learning curves: `benchmarks/results/imitation_gain_curves.png`"]
    return "\n".join(lines) + "\n"


def imitation_headline(r: dict, parity: dict | None = None) -> str:
    """README's headline: the seed's table (METHOD.md section 6) filled in by the imitation benchmark."""
    if "test_ap40_seed0" not in r:
        return "(not measured under the protocol yet: `python benchmarks/imitation_gain.py --preset cpu`)\n"
    models = (parity or {}).get("models", {})
    lines = ["| model | FLOPs | params | car E/M/H | ped E/M/H | cyc E/M/H | mAP | test mAP40, mean of seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for key, arch in (("1x", "shuffledet_1x"), ("0.25x", "shuffledet_0.25x"), ("0.25x-I", "shuffledet_0.25x")):
        ap, m = r["test_ap40_seed0"][key], models.get(arch)
        flops = f"{m['backbone_macs'] / 1e9:.2f} G" if m else "n/a"
        params = f"{m['params'] / 1e6:.2f} M" if m else "n/a"
        mean9 = sum(ap[c][lvl] for c in ap for lvl in LEVELS) / 9
        seeds = r["map40"][key]
        overall = seeds if isinstance(seeds, (int, float)) else sum(seeds) / len(seeds)
        lines.append(f"| {key} | {flops} | {params} | {_ap_cells(ap)} | {mean9:.1f} | {overall:.2f} |")
    d = r["data"]
    return (f"SynthKITTI test split ({d['test_images']:,} images, reported once), AP40 of seed {r['seeds'][0]}'s "
            f"models trained at {d['image_size'][0]}x{d['image_size'][1]} (`{r['command']}`); FLOPs and params as "
            "the seed counts them (backbone multiply-adds at 384x1248, `model_parity.json`). Imitation gain over "
            f"seeds {r['seeds']}: {_claim(r['gain'])}.\n\n" + "\n".join(lines) + "\n")


#: generators that read a second results file besides their own (passed as their second argument)
imitation_headline.needs = "model_parity.json"


def model_parity(r: dict) -> str:
    lines = ["| model | backbone MACs | seed (METHOD.md) | params | seed |", "|---|---|---|---|---|"]
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['backbone_macs'] / 1e9:.4f} G | {m['seed_backbone_macs_g']} G | "
                     f"{m['params'] / 1e6:.4f} M | {m['seed_params_m']} M |")
    return f"`{r['command']}` ({r['image_size'][0]}x{r['image_size'][1]}):\n\n" + "\n".join(lines) + "\n"


def eval_speed(r: dict) -> str:
    return (f"`python benchmarks/eval_speed.py --repeat 7 --reference-images 100`: {r['images']:,} val images, "
            f"official protocol: **{r['vectorised_best_s']:.3f} s** best of 7 (median {r['vectorised_median_s']:.3f} s; "
            f"target {r['target_s']} s); a pure-python transcription of the devkit takes {r['reference_s']:.3f} s per "
            f"{r['reference_images']} images; max AP difference on that subset {r['max_abs_ap_diff_subset']:.1e}.\n")


def _per_seed_rows(r: dict, arms: dict[str, str], chosen: Callable[[str], str], ort: dict | None = None) -> list[str]:
    ort = ort or {}
    head = "| model | chosen on val (seed 0) | test mAP40 per seed | mean |" + (" ORT per seed | ORT mean |" if ort else "")
    lines = [head, "|---|---|---|---|" + ("---|---|" if ort else "")]
    for arm, label in arms.items():
        v = r["map40"][arm]
        row = f"| {label} | {chosen(arm)} | {', '.join(f'{x:.2f}' for x in v)} | {sum(v) / len(v):.2f} |"
        if ort:
            o = ort.get(arm)
            row += (f" {', '.join(f'{x:.2f}' for x in o)} | {sum(o) / len(o):.2f} |" if o else " - | - |")
        lines.append(row)
    return lines


def prune(r: dict) -> str:
    if "report_split" in r:
        return _prune_protocol(r)
    names = {"student": "0.5x-I student", "pruned": "pruned (default), imitation",
             "pruned_noimit": "pruned, no imitation", "pruned_unaligned": "pruned, depthwise_align 1",
             "student_ft": "student + same fine-tune steps (equal budget)"}
    lines = ["| model | MACs | val mAP40 | car AP40 E/M/H | ped E/M/H | cyc E/M/H |", "|---|---|---|---|---|---|"]
    for k, row in r["rows"].items():
        lines.append(f"| {names.get(k, k)} | {row['macs'] / 1e6:.0f} M | {row['map40']:.2f} | {_ap_cells(row['ap40'])} |")
    return ("**Pre-protocol (one seed, selected and reported on the same val images)**: "
            f"map_drop {r['map_drop']:.2f} ({r['map_drop_vs_equal_budget']:.2f} vs the equal-budget student), "
            f"MACs ratio {r['macs_ratio']:.3f}, ORT fp32 speed-up {r['ort_speedup_384x1248']:.2f}x at 384x1248 "
            "(isolated processes, unrewritten fp32 graphs).\n\n" + "\n".join(lines) + "\n")


def _prune_protocol(r: dict) -> str:
    d, st, c = r["data"], r["steps"], r["claims"]
    arms = {"student": "0.5x-I student", "pruned": "pruned (0.6 MACs), fine-tune with imitation",
            "pruned_noimit": "pruned, fine-tune without imitation",
            "student_ft": "student + the same fine-tune (equal budget)"}

    def chosen(arm: str) -> str:
        return f"fine-tune lr {r['chosen'][arm]['ft_lr']}" if arm in r["chosen"] else "(student lr fixed)"

    lines = [f"`{r['command']}`: SynthKITTI {d['train_images']:,} train / {d['val_images']:,} val (every selection) / "
             f"{d['test_images']:,} test (reported once), {d['image_size'][0]}x{d['image_size'][1]}, batch {st['batch']}; "
             f"students {st['student']:,} steps ({st['student_passes']:.1f} passes), fine-tunes {st['fine_tune']:,} "
             f"steps; seeds {r['seeds']}; backbone MACs ratio {r['macs_ratio']:.3f}.", "",
             *_per_seed_rows(r, arms, chosen), "",
             f"- map_drop (student - pruned): {_claim(c['map_drop'])}",
             f"- map_drop_vs_equal_budget (student_ft - pruned): {_claim(c['map_drop_vs_equal_budget'])}",
             f"- imitation_effect (pruned - pruned without imitation): {_claim(c['imitation_effect'])}",
             f"- ORT fp32 speed-up of the trained pruned model (fast exact fp32 graphs, isolated processes): "
             f"{r['ort_speedup_384x1248']:.2f}x at 384x1248, {r['ort_speedup']:.2f}x at "
             f"{d['image_size'][0]}x{d['image_size'][1]}",
             "- learning curves: `benchmarks/results/prune_curves.png`"]
    return "\n".join(lines) + "\n"


def _quant_protocol(r: dict) -> str:
    d, st, c = r["data"], r["steps"], r["claims"]
    arms = {"student": "fp32 student", "fp32_ft": "fp32 + the same steps (equal budget)", "ptq": "PTQ",
            "qat": "QAT", "qat_imitation": "QAT + imitation"}

    def chosen(arm: str) -> str:
        return ", ".join(f"{k} {v}" for k, v in r["chosen"][arm].items()) if arm in r["chosen"] else "-"

    lines = [f"`{r['command']}`: SynthKITTI {d['train_images']:,} train / {d['val_images']:,} val (every selection) / "
             f"{d['test_images']:,} test (reported once), {d['image_size'][0]}x{d['image_size'][1]}, batch {st['batch']}; "
             f"QAT and the equal-budget control {st['qat']:,} steps; seeds {r['seeds']}. PyTorch int8 program and ORT:",
             "", *_per_seed_rows(r, arms, chosen, ort=r.get("ort_map40")), "",
             f"- ptq_map_drop (fp32 - PTQ): {_claim(c['ptq_map_drop'])}",
             f"- qat_map_drop (fp32 - QAT + imitation): {_claim(c['qat_map_drop'])}",
             f"- qat_map_drop_vs_equal_budget (fp32 + the same steps - QAT + imitation): "
             f"{_claim(c['qat_map_drop_vs_equal_budget'])}",
             *([f"- imitation_effect_in_qat (QAT + imitation - QAT): {_claim(c['imitation_effect_in_qat'])}"]
               if "imitation_effect_in_qat" in c else []),  # a results JSON from before the claim existed
             f"- ort_vs_torch (QAT + imitation, ORT - PyTorch): {_claim(c['ort_vs_torch'])}",
             f"- int8_speedup (fast exact fp32 / INT8, trained models, isolated processes): {r['int8_speedup']:.2f}x "
             f"at 384x1248, {r['int8_speedup_at_run_size']:.2f}x at {d['image_size'][0]}x{d['image_size'][1]}",
             "- learning curves: `benchmarks/results/quant_curves.png`"]
    return "\n".join(lines) + "\n"


def quant(r: dict) -> str:
    if "report_split" in r:
        return _quant_protocol(r)
    lines = ["| model | val mAP40 PyTorch | val mAP40 ORT |", "|---|---|---|"]
    for k, v in r["map"].items():
        lines.append(f"| {k} | {v:.2f} | {_f(r['ort_map'].get(k))} |")
    return ("**Pre-protocol (one seed, selected and reported on the same val images)**: "
            f"ptq_map_drop {r['ptq_map_drop']:.2f}, qat_map_drop {r['qat_map_drop']:.2f} "
            f"({r['qat_map_drop_vs_equal_budget']:.2f} vs the equal-budget fp32 model, "
            f"{r['fp32_equal_budget_map40']:.2f}).\n\n" + "\n".join(lines) + "\n")


def quant_speed(r: dict) -> str:
    widths = list(r["widths"])
    keys = [k for k in r["widths"][widths[0]] if k != "fp32"]
    lines = ["| INT8 graph | " + " | ".join(widths) + " |", "|---|" + "---|" * len(widths)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_f(r["widths"][w].get(k, {}).get("ratio_to_fp32")) for w in widths) + " |")
    lines.append("| fp32 median ms | " + " | ".join(f"{r['widths'][w]['fp32']['median_ms']:.1f}" for w in widths) + " |")
    base = ("the fp32 baseline is the fastest exact fp32 graph (exporter rewrites)" if r.get("fp32_rewrites")
            else "**the fp32 baseline is the unrewritten graph** (pre-protocol: the fair baseline is `fp32_rewrites.json`)")
    return (f"INT8 time / fp32 time, random-weight models, {r['size'][0]}x{r['size'][1]}, batch {r['batch']}, "
            f"{r['threads']} threads, median of {r['runs']} in alternating blocks; {base}:\n\n" + "\n".join(lines) + "\n")


def fp32_rewrites(r: dict) -> str:
    names = list(r["variants"])
    lines = ["| width | " + " | ".join(names) + " | fastest |", "|---|" + "---|" * (len(names) + 1)]
    for w, row in r["widths"].items():
        lines.append(f"| {w}x | " + " | ".join(f"{row['median_ms'][n]:.1f}" for n in names) + f" | {row['fastest']} |")
    return (f"`{r['command']}`: fp32 ORT median ms, {r['image_size'][0]}x{r['image_size'][1]}, {r['threads']} threads, "
            f"each graph in its own process ({r['runs']} runs):\n\n" + "\n".join(lines) + "\n")


def distill_methods(r: dict) -> str:
    out = [f"`{r['command']}` ({r['steps']['passes']:.1f} passes per student, seeds {r['seeds']}, chosen on "
           f"{r['selection_split']}, reported on {r['report_split']}):", ""]

    def chosen(c: dict) -> str:
        return ", ".join([f"lr {c['lr']}"] + [f"{m} {w:g}" for m, w in c.get("weights", {}).items()])

    for model, st in r["students"].items():
        t = st.get("teacher", {})
        out += [f"`{st['command']}`", ""] if len(r["students"]) > 1 and st.get("command") else []
        out += [f"| {model} (teacher {t.get('arch')}, test {_f(t.get('test_map40'))}) | chosen on val | "
                "test mAP40 per seed | mean | vs FGFI | vs none |", "|---|---|---|---|---|---|"]
        for a in st["arms"]:
            v = st["test_map40"][a]
            out.append(f"| {a} | {chosen(st['chosen'][a])} | {', '.join(f'{x:.2f}' for x in v)} | {sum(v) / len(v):.2f} | "
                       f"{_claim(st['vs_fgfi'][a]) if a in st['vs_fgfi'] else 'reference'} | "
                       f"{_claim(st['vs_none'][a]) if a in st['vs_none'] else '-'} |")
        b = st["best_vs_fgfi"]
        out += ["", f"Best non-FGFI method by val: **{b['method']}**, {_claim(b)} against FGFI on test; goal "
                f"(>= +1.0 over FGFI, CI above 0) **{'met' if st['goal_met'] else 'not met'}**.", ""]
    return "\n".join(out)


def families(r: dict) -> str:
    """The benchmark's own table (``families.render_md``), without its title."""
    import families as fam  # benchmarks/ is on sys.path: this script lives there

    return _untitled(fam.render_md(r))


def fpn_speed(r: dict) -> str:
    """The benchmark's own table (``fpn_speed.render_md``)."""
    import fpn_speed as fs

    return fs.render_md(r)


def fpn_prune_speed(r: dict) -> str:
    """The benchmark's own table (``fpn_prune_speed.render_md``)."""
    import fpn_prune_speed as fps

    return fps.render_md(r)


def _untitled(md: str) -> str:
    """A benchmark's own markdown without its ``# title`` line and the blank line after it."""
    lines = md.splitlines()
    return "\n".join(lines[2:] if lines and lines[0].startswith("# ") else lines) + "\n"


def distill_methods_calibrated(r: dict) -> str:
    """The calibrated head-to-head's own tables (``distill_methods.render_calibrated_md``), issue #41."""
    import distill_methods as dm

    return _untitled(dm.render_calibrated_md(r))


def deploy(r: dict) -> str:
    """What ``compressdet deploy`` chooses per model and size (``deploy.render_md``), issue #40."""
    import deploy as dep

    return _untitled(dep.render_md(r))


def yolo(r: dict) -> str:
    """compressdet's chain against Ultralytics' own path (``yolo.render_md``), issue #45."""
    import yolo as yb

    return _untitled(yb.render_md(r))


def demo(r: dict) -> str:
    m, met, g = r["minutes"], r["met"], r["goals"]

    def lat(row: dict) -> str:
        return ", ".join(f"{b} {v:.1f}" for b, v in row["latency_ms_b1"].items()) or "n/a"

    lines = [f"`{r['command']}` (a fresh clone and `.venv` at commit `{r['commit'][:10]}`, {r['cpu_threads']} CPU "
             f"threads): **{m['total']:.1f} min** in all (install {m['install']:.1f}, recipe {m['recipe']:.1f}, "
             f"predict {m['predict']:.1f}); goal < {g['minutes']:.0f} min {'met' if met['minutes'] else 'NOT met'}. "
             f"mAP40 on the demo's {r['split']} split (goals: teacher >= {g['teacher_map40']:.0f} "
             f"{'met' if met['teacher_map40'] else 'NOT met'}, INT8 >= {g['int8_map40']:.0f} "
             f"{'met' if met['int8_map40'] else 'NOT met'}). One run, seed {r['seeds'][0]}, no CI: a goal check, "
             "not an accuracy claim (the recipe was redesigned after its first run's test numbers).", "",
             "| model | precision | mAP40 | ms, batch 1 (backend) |", "|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['label']} | {row['precision']} | {_f(row['map40'])} | {lat(row)} |")
    return "\n".join(lines) + "\n"


def backends(r: dict) -> str:
    be = ("ort", "openvino-f32", "openvino", "ort-int8", "openvino-int8")
    lines = [f"`{r['command']}` ({r['size'][0]}x{r['size'][1]}, batch 1, {r['threads']} threads; each (model, backend) "
             f"in processes of its own, {r['rounds']} rounds x {r['runs']} runs, median ms, and the precision each "
             "backend really computed in):", "",
             "| model | weights | " + " | ".join(be) + " | INT8 vs best exact fp32 | INT8 vs OpenVINO default |",
             "|---|---|" + "---|" * (len(be) + 2)]
    for row in r["rows"].values():
        cells = [f"{row['median_ms'][b]:.1f} ({row['precision'][b]})" for b in be]
        lines.append(f"| {row['model']} | {row['weights'].split(' ')[0]} | " + " | ".join(cells)
                     + f" | {row['int8_speedup_vs_best_exact_fp32']:.2f}x ({row['best_int8']['backend']} vs "
                     f"{row['best_exact_fp32']['backend']}) | {row['int8_speedup_vs_openvino_default']:.2f}x |")
    g = r.get("goals")
    if g:
        lines += ["", "Goals for the 0.25x student: INT8 >= 2x the best exact fp32 backend "
                  f"{'met' if g['int8_student_2x_vs_best_exact_fp32'] else 'NOT met'}; INT8 faster than OpenVINO's "
                  f"default (bf16) fp32 run {'met' if g['int8_student_faster_than_openvino_default_fp32'] else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def train_speed(r: dict) -> str:
    v_names = [("before", "before #42"), ("after", "after #42 (fp32)"), ("channels_last", "+ channels_last"),
               ("bf16", "+ channels_last + CPU bf16 autocast"), ("compile", "+ torch.compile")]
    lines = [f"`python benchmarks/train_speed.py --preset {r['preset']} --threads {r['threads']}` "
             f"({r['image_size'][0]}x{r['image_size'][1]}, batch {r['batch']}, {r['threads']} thread(s), "
             f"{r['cpu']}, native bf16: {'yes' if r['bf16_native'] else 'no'}; {r['note']}; img/s of the whole "
             "training step, median of rounds):", "",
             "| model | " + " | ".join(label for _, label in v_names) + " | after / before | after: data / forward / "
             "loss / backward / clip / optimizer / rest (ms per step) |", "|---|" + "---|" * (len(v_names) + 2)]
    for arch, m in r["models"].items():
        cells = [f"{m[k]['img_per_s']:.2f}" if k in m else "-" for k, _ in v_names]
        sp = m["after"]["split_ms"]
        split = " / ".join(f"{sp[k]:.0f}" for k in ("data", "forward", "loss", "backward", "clip", "optimizer"))
        rest = sp["step_other"] + sp["hooks"]
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {m['speedup_after_vs_before']:.3f}x | {split} / "
                     f"{rest:.0f} |")
    comp = next((m["compile"] for m in r["models"].values() if "compile" in m), None)
    if comp is not None:
        lines += ["", f"torch.compile of the step's model: {comp['first_step_s']:.0f} s to compile (first step)."]
    return "\n".join(lines) + "\n"


def fuzz(r: dict) -> str:
    """The parsers' fuzzing (issue #44): examples and failures per target, and the code it ran on."""
    target = r.get("examples_per_target", 0)
    done = min((t["examples"] for t in r["targets"].values()), default=0) >= target
    cmd = f"python benchmarks/fuzz.py --examples {target}" + (f" --chunk {r['chunk']}" if r.get("chunk") else "")
    where = f" at commit `{r['commit'][:10]}`" if r.get("commit") else ""
    digest = f" (package + fuzz tests digest `{r['code']}`)" if r.get("code") else ""
    took = f"{r['seconds'] / 3600:.1f} h" if r["seconds"] >= 3600 else f"{r['seconds'] / 60:.0f} min"
    lines = [f"`{cmd}`{where}{digest}, Hypothesis {r['versions']['hypothesis']}, {r.get('rounds', 1)} round(s) "
             f"each with its own seed, {took}: **{r['examples_total']:,} examples, {r['failures']} failures**"
             + ("" if done else f" (incomplete: not every target reached {target:,})") + ".", "",
             "| target | examples | failures |", "|---|---|---|"]
    for name, t in sorted(r["targets"].items()):
        lines.append(f"| {name} | {t['examples']:,} | {t['failures']} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- pareto (#42)
def pareto(r: dict) -> str:
    """The seed's table, one row per model of the chains (pareto.json): FLOPs, params, AP40 per class and
    difficulty (seed 0), mAP, test mAP40 over seeds, deployed latency and backend; then the claims.
    (pareto.md is written with it; its block is on the results index until the cpu preset's pareto.json
    exists, then it becomes README's headline block.)"""
    sizes = list(r["points"][0]["latency_ms_by_size"]) if r["points"] else []
    lines = [f"`{r['command']}`: test split, chosen on val, seeds {r['seeds']}; latency: the candidate "
             "`compressdet deploy` chooses (fastest within its mAP tolerance), batch 1, at " + " / ".join(sizes)
             + ". FLOPs: backbone multiply-adds at 384x1248.", "",
             "| model | FLOPs | params | car E/M/H | ped E/M/H | cyc E/M/H | mAP | test mAP40 (95% CI) | "
             + " | ".join(f"latency {s} (ms)" for s in sizes) + " | backend |",
             "|---|" + "---|" * (8 + len(sizes))]
    front = set(r["front"])
    for p in r["points"]:
        ap = p["ap40_seed0"]
        mean9 = sum(ap[c][lvl] for c in ap for lvl in LEVELS) / 9
        name = f"**{p['model']}**" if p["model"] in front else p["model"]
        lat = " | ".join(_f(p["latency_ms_by_size"].get(s), 1) for s in sizes)
        lines.append(f"| {name} | {p['flops']} | {p['params']} | {_ap_cells(ap)} | {mean9:.1f} | {p['mean']:.2f} "
                     f"[{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] | {lat} | {p['backend']} ({p['precision']}) |")
    lines += ["", "Bold: on the Pareto front (mAP vs deployed latency at the run size).", ""]
    for c in r["compression_for_free"]:
        d = c["map_diff"]
        lines.append(f"- {c['model']} vs {c['baseline']}: {d['mean']:+.2f} mAP [{d['ci95'][0]:+.2f}, "
                     f"{d['ci95'][1]:+.2f}] at {c['speedup']:.2f}x its deployed speed")
    for k, v in r["dominates_direct"].items():
        lines.append(f"- direct {k}: " + (f"dominated by {v['by']}" if v["dominated"] else "not dominated"))
    g = r["goals"]
    lines.append(f"- goals: chain-final model as accurate (CI lower bound >= 0) at >= {r['goal_speedup']:g}x: "
                 f"{g['chain_final_as_accurate_at_3x']['met']}; every direct student dominated: "
                 f"{g['every_direct_student_dominated']['met']}")
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[dict], str]] = {
    "backends.json": backends,
    "demo.json": demo,
    "distill_methods.json": distill_methods, "families.json": families, "fpn_speed.json": fpn_speed,
    "fpn_prune_speed.json": fpn_prune_speed,
    "imitation_gain.json": imitation_gain, "imitation_gain.json:headline": imitation_headline,
    "model_parity.json": model_parity, "eval_speed.json": eval_speed,
    "prune.json": prune, "quant.json": quant, "quant_speed.json": quant_speed, "fp32_rewrites.json": fp32_rewrites,
    "train_speed.json": train_speed, "fuzz.json": fuzz,
    # measured by long runs still to come (issues #40, #41, #42, #45): their pages say "not measured yet" until then
    "deploy.json": deploy, "distill_methods_calibrated.json": distill_methods_calibrated, "yolo.json": yolo,
    "pareto.json": pareto,
}


def render(readme: str, results: Path = RESULTS, page: str = "README.md") -> str:
    """A page's text with every marked block regenerated from ``results``."""

    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"{page}: results block names '{name}', which has no generator in {__file__}")
        gen, path = GENERATORS[name], results / name.split(":")[0]
        if not path.is_file():
            body = f"(not measured yet: `benchmarks/results/{path.name}` does not exist)\n"
        elif hasattr(gen, "needs"):
            extra = results / gen.needs
            body = gen(json.loads(path.read_text()), json.loads(extra.read_text()) if extra.is_file() else None)
        else:
            body = gen(json.loads(path.read_text()))
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(block, readme)


def pages() -> list[Path]:
    """README and every docs page that holds a results block."""
    docs = [p for p in sorted(DOCS.rglob("*.md")) if BLOCK.search(p.read_text())]
    return [README, *docs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a page differs from what the JSON files give")
    ap.add_argument("--readme", type=Path, nargs="+", default=None, metavar="PAGE",
                    help="the markdown pages to regenerate (default: README.md and the docs pages with results blocks)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    failed = 0
    for page in args.readme or pages():
        old = page.read_text()
        new = render(old, args.results, page=str(page))
        if args.check:
            stale = [m.group("name") for m, n in zip(BLOCK.finditer(old), BLOCK.finditer(new)) if m.group(0) != n.group(0)]
            if stale:
                print(f"{page}: results blocks out of date with {args.results}: {', '.join(stale)} "
                      "(run python benchmarks/readme_tables.py)", file=sys.stderr)
                failed = 1
        elif new != old:
            from compressdet._io import atomic_write_text

            atomic_write_text(page, new)
    return failed


if __name__ == "__main__":
    sys.exit(main())
