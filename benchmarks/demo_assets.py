"""Make the models ``make demo`` starts from: the imitation benchmark's trained teacher and a student
it distilled, stored half precision under ``compressdet/assets/``, with a card and a results JSON.

Why this and not a fresh training run: the cpu preset's teacher is 12 passes over 1,000 SynthKITTI
images (~an hour on 2 cores), already recorded in the benchmark ledger; the demo should show what
compression does to a detector that detects, in minutes. The files are the ledger's models,
re-saved with ``save_model(half=True)``; both the float32 original and the float16 copy are
evaluated on the benchmark's held-out test split and on the demo recipe's test split, so the card
says what the shipped bytes score, and whether fp16 storage costs anything.

    python benchmarks/demo_assets.py            # writes compressdet/assets/*.pt, CARD.md,
                                                # benchmarks/results/demo_assets.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from _ledger import Ledger  # noqa: E402

ASSETS = ROOT / "compressdet" / "assets"
RESULTS = ROOT / "benchmarks" / "results"
DEMO_RECIPE = ROOT / "recipes" / "demo.yaml"
COMMAND = "python benchmarks/demo_assets.py"


def _entry(ledger: Ledger, pattern: str) -> str:
    names = sorted(n for n in ledger.entries() if Path(n).match(pattern))
    if not names:
        raise SystemExit(f"{ledger.root}: no finished run matches '{pattern}' (run benchmarks/imitation_gain.py "
                         "--preset cpu first)")
    return names[0]


def main(argv: list[str] | None = None) -> int:
    import imitation_gain as ig
    from _protocol import test_map

    from compressdet._io import atomic_write_json, atomic_write_text, sha256_file
    from compressdet.assets import ASSETS as NAMES
    from compressdet.models import load_model, model_summary, save_model
    from compressdet.recipe import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-run", default="teacher-*", help="ledger entry (glob) of the teacher run")
    ap.add_argument("--student-run", default="I-lr*-w1.0-s0-*",
                    help="ledger entry (glob) of the distilled student run (default: seed 0 at the lr chosen on val, weight 1.0)")
    ap.add_argument("--out", type=Path, default=ASSETS)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    preset = "cpu"
    ledger = Ledger.for_bench("imitation_gain", preset)
    p = ig.PRESETS[preset]
    bench_data = ig._data(p, True)
    demo_data = load_recipe(DEMO_RECIPE, check_paths=False).data.model_dump(mode="json")
    cache = ledger.test_dir
    t0 = time.perf_counter()
    out: dict = {"command": COMMAND, "preset": preset, "ledger": str(ledger.root.relative_to(ROOT)),
                 "benchmark_data": {"synth": bench_data["synth"], "image_size": bench_data["image_size"]},
                 "demo_data": {"recipe": str(DEMO_RECIPE.relative_to(ROOT)), "synth": demo_data.get("synth"),
                               "image_size": demo_data["image_size"]},
                 "report_split": "test", "models": {}}
    for asset, pattern, stage in (("shuffledet_1x_synthkitti", args.teacher_run, "teacher"),
                                  ("shuffledet_0.25x_imitated_synthkitti", args.student_run, "student")):
        name = _entry(ledger, pattern)
        src, man = ledger.kept_file(name, stage)  # the recorded run, or this CPU platform's re-make of it
        model, meta = load_model(src)
        dst = args.out / NAMES[asset][0]
        save_model(model, dst, half=True,
                   meta={"asset": asset, "source_run": name, "source_sha256": sha256_file(src),
                         "trained_by": f"python benchmarks/imitation_gain.py --preset {preset}",
                         "classes": meta.get("classes")} | ({"image_size": meta["image_size"]}
                                                              if "image_size" in meta else {}))
        rec = man["stages"][stage]
        summ = model_summary(model, tuple(bench_data["image_size"]))
        out["models"][asset] = {
            "file": str(dst.relative_to(ROOT)) if dst.is_relative_to(ROOT) else str(dst),
            "sha256": sha256_file(dst), "bytes": dst.stat().st_size,
            "source": {"run": name, "file": f"<ledger store>/{name}/{src.relative_to(ledger.store / name)}",
                       "platform": man.get("versions", {}).get("cpu"),
                       "sha256": sha256_file(src),
                       "bytes": src.stat().st_size},
            "arch": model.arch, "params": summ["params"]["total"], "backbone_macs": summ["macs"]["backbone"],
            "steps": (rec.get("metrics") or {}).get("steps"), "val_map40": (rec.get("metrics") or {}).get("map40"),
            "recipe": man.get("recipe"),
            "test_map40": {
                "benchmark_fp32": test_map(src, bench_data, cache)["map40"],
                "benchmark_fp16_file": test_map(dst, bench_data, cache)["map40"],
                "demo_fp16_file": test_map(dst, demo_data, cache)["map40"],
            },
        }
        print(f"{asset}: {out['models'][asset]['test_map40']}", flush=True)
    out["minutes"] = (time.perf_counter() - t0) / 60
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "demo_assets.json", out)
    atomic_write_text(args.out / "CARD.md", card(out))
    print(f"wrote {args.out}/CARD.md and {args.results / 'demo_assets.json'}")
    return 0


def real_images_note() -> str:
    """What the shipped models are not for, with their mAP40 on real KITTI images
    (``compressdet.assets.REAL_KITTI_MAP40``: measured by the two commands named here, not by this
    script, whose runs never see a real image)."""
    from compressdet.assets import REAL_KITTI_MAP40

    scores = " and ".join(f"{v:.2f} (`{k}`)" for k, v in REAL_KITTI_MAP40.items())
    return ("**Not for real images.** They were trained on SynthKITTI's rendered pixels only and find almost nothing "
            f"in real photos: mAP40 {scores}, in %, on the 29 real KITTI training images of `kitti_real` "
            "(`compressdet predict training/image_2 --model asset:<name> --save-txt kitti`, then `compressdet eval "
            "--gt training/label_2 --det predictions/labels`). They are for the demo and for trying compressdet's "
            "stages; train a teacher on your own data for real use. `compressdet predict` prints a one-line note "
            "saying so whenever it runs an `asset:` model.")


def card(res: dict) -> str:
    """The model card, generated from the results JSON (so every number in it has a producing command)."""
    bd, dd = res["benchmark_data"], res["demo_data"]
    lines = ["# Shipped models (compressdet/assets)", "",
             f"Written by `{res['command']}` from the runs of `python benchmarks/imitation_gain.py --preset "
             f"{res['preset']}` recorded in `{res['ledger']}`; numbers from `benchmarks/results/demo_assets.json`.",
             "",
             "Trained on SynthKITTI (compressdet's synthetic KITTI-layout images; object layouts from real KITTI "
             f"label files, pixels rendered), {bd['image_size'][0]}x{bd['image_size'][1]} input, "
             f"{bd['synth']['num_images']} generated images split train / val / test "
             f"({1 - bd['synth']['val_fraction'] - bd['synth']['test_fraction']:.0%} / {bd['synth']['val_fraction']:.0%} / "
             f"{bd['synth']['test_fraction']:.0%}, disjoint layout pools), on 2 CPU cores. Checkpoints were chosen on "
             "val; the test split was never selected on. They detect SynthKITTI's rendered cars, pedestrians and "
             "cyclists; they are not KITTI or real-image detectors.", "", real_images_note(), "",
             "Weights are stored float16 (`save_model(half=True)`); `load_model` returns float32. Use as "
             "`path: \"asset:<name>\"` in a `model_file` stage, or `compressdet predict SRC --model asset:<name>`.", "",
             "| asset | model | params | backbone MACs | training | test mAP40 fp32 | test mAP40 fp16 file | "
             "demo test mAP40 (fp16) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        t = m["test_map40"]
        lines.append(f"| `{name}` | {m['arch'].get('name')} | {m['params'] / 1e6:.3f} M | {m['backbone_macs'] / 1e9:.3f} G | "
                     f"run `{m['source']['run']}`, {m['steps']} steps, val mAP40 {m['val_map40']:.2f} | "
                     f"{t['benchmark_fp32']:.2f} | {t['benchmark_fp16_file']:.2f} | {t['demo_fp16_file']:.2f} |")
    lines += ["", f"Demo test split: `{dd['recipe']}`'s data ({dd['synth']['num_images']} images generated without "
              "real layouts, from the fitted layout sampler), its test images.", "",
              "License: the training images are synthetic; the object layouts come from KITTI label files (CC BY-NC-SA "
              "3.0), so these weights are for non-commercial use."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
