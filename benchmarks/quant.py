"""INT8 on CPU: PTQ vs QAT (without / with imitation) mAP, and ONNX Runtime latency fp32 vs INT8.

Two parts:

* ``speed``: randomly initialised ShuffleDets (BN statistics randomised so activations are not
  degenerate) at batch 1, 384x1248; every graph variant of the speed study (docs/quantization.md)
  timed in alternating blocks of runs in one process (the machine is shared: ratios inside one run
  are what counts; ``compressdet.bench.latency.compare_latency``), median of ``--runs``; writes
  benchmarks/results/quant_speed.json.
* ``accuracy``: under the evidence protocol (``benchmarks/_protocol.py``, issue 19): per seed (3
  paired seeds) the imitation benchmark's teacher and its chosen 0.25x-I student of that seed
  (``smoke``: trained here), then PTQ (calibration drawn by the seed), QAT, QAT + imitation and the
  equal-budget control (the fp32 student trained with the same steps and imitation). Each arm's
  setting is chosen on val on seed 0 from as many options as every other arm's (PTQ: calibration
  size; QAT: lr; QAT + imitation: weight at QAT's lr; control: lr); every final model is evaluated
  once on the whole test split after every selection is made (the chosen runs only), as the PyTorch
  int8 program and under ORT (cached by sha256).
  Claims (``ptq_map_drop``, ``qat_map_drop``, ``qat_map_drop_vs_equal_budget``, ``ort_vs_torch``,
  ...) are paired differences with 95% t intervals; ``int8_speedup``: seed 0's trained student as
  the fastest exact fp32 graph vs INT8, each graph in a process of its own, at 384x1248 and at the
  run's size. Writes benchmarks/results/quant.{json,md} and quant_curves.png. Resumable (run
  folders, test evaluations and timings under ``--work``, default ``benchmarks/.quant/<preset>``).

    .venv/bin/python benchmarks/quant.py speed [--widths 0.25 0.5 1] [--runs 50] [--threads 2]
    .venv/bin/python benchmarks/quant.py accuracy --preset smoke   # ~14 min on a loaded 2-core VM, plumbing only
    .venv/bin/python benchmarks/quant.py accuracy --preset cpu     # after imitation_gain.py --preset cpu; ~3 h
    .venv/bin/python benchmarks/quant.py accuracy --preset gpu     # after imitation_gain.py --preset gpu (CUDA)
    .venv/bin/python benchmarks/quant.py head [--run RUN --stage student]
    .venv/bin/python benchmarks/quant.py size [--widths 0.25 0.5 1]

``speed``'s fp32 baseline is the fastest exact fp32 graph (``compressdet.export.fast_fp32``
rewrites: what ``export_onnx`` writes by default), so every INT8 / fp32 ratio is best vs best; the
unrewritten graph is timed too (``fp32_unrewritten``). ``size`` reports the unrewritten fp32 file.

``head``: PTQ of a trained student with the float head, the int8 head with one output scale per
kind, and the int8 head with one shared scale; benchmarks/results/quant_head.{json,md}.

``cpu`` preset: the imitation benchmark's cpu data (1,000 train / 500 val / 1,000 test SynthKITTI
at 192x624, batch 2, 2 threads), QAT and the control 500 steps (1 pass over the training set; the
students already saw 3), 3 options per arm on seed 0 then 4 arms on seeds 1 and 2: 20 stage runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from compressdet._io import atomic_write_json, atomic_write_text
from compressdet.models import build_model
from compressdet.pipeline import cpu_platform
from compressdet.quant.ptq import randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:  # _protocol, _reuse, imitation_gain
    sys.path.insert(0, str(ROOT / "benchmarks"))

from _protocol import run_digest as _digest  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ARCH = {"0.25": "shuffledet_0.25x", "0.5": "shuffledet_0.5x", "1": "shuffledet_1x"}


# ---------------------------------------------------------------------------------------------
# speed
def _export_fp32(model: torch.nn.Module, x: torch.Tensor, path: Path, rewrites: bool = True) -> Path:
    """fp32 ONNX of ``model``; ``rewrites`` (default): the exporter's exact float rewrites first
    (``compressdet.export.fast_fp32``: the fastest exact fp32 graph, the fair baseline of every
    INT8 / fp32 ratio); False: the model as it is."""
    from compressdet.export._onnx import prepare_model
    from compressdet.export.fast_fp32 import fast_fp32

    module, _ = fast_fp32(prepare_model(model), rewrites)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["head"])
    return path


def _fp32_rewrites_applied(model: torch.nn.Module) -> dict | None:
    from compressdet.export._onnx import prepare_model
    from compressdet.export.fast_fp32 import fast_fp32

    return fast_fp32(prepare_model(model), True)[1]


def _ort_static(fp32: Path, out: Path, calib: list[np.ndarray]) -> Path:
    """Stock ONNX Runtime static quantization (QDQ, u8 activations, s8 per-channel weights)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"images": c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _pt2e_int8(model, x, calib, out: Path, *, fold: bool, pad: int | None, pool_conv: bool = True,
               align: int | None = 16, int8_head: bool = False, head_weights: str = "int8",
               rewrites: bool | tuple[str, ...] = True) -> Path:
    """PT2E PTQ graph of one step of the speed ladder; ``rewrites``: which ``quant._onnx_rewrites``
    passes run on the exported graph (True: all, as the exporter does); ``head_weights``: the float-output
    head's weights (``QuantConfig.head_weights``; ``int8_head`` quantizes its output too, per kind)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from compressdet.quant._pt2e import capture, capture_options, convert, make_quantizer
    from compressdet.quant.onnx_int8 import export_int8_onnx
    from compressdet.recipe import QuantConfig

    cfg = QuantConfig(keep_head_float=not int8_head, head_weights=head_weights)  # int8 head: a scale per kind
    gm = capture(model, x, fold_shuffle=fold, pad_stem=pad, train=False, pool_as_conv=pool_conv, pad_bottleneck=align,
                 **capture_options(cfg))
    prepared = prepare_pt2e(gm, make_quantizer(cfg, is_qat=False, observer="minmax"))
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for c in calib:
            prepared(torch.from_numpy(c))
    return export_int8_onnx(convert(prepared), x, out, ort_rewrites=rewrites)


def _time_blocks(sessions: dict, feed: dict, runs: int) -> dict[str, dict]:
    """Median/p90 wall ms per session, timed in alternating blocks (``compare_latency``: interleaved
    single runs let the idle sessions' spinning ORT threads slow the timed one)."""
    from compressdet.bench.latency import compare_latency

    res = compare_latency({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, runs=runs)
    return {k: {"median_ms": v["median_ms"], "p90_ms": v["p90_ms"]} for k, v in res.items()}


def _random_inputs(h: int, w: int) -> tuple[np.random.Generator, list[np.ndarray]]:
    """The speed study's generator and its two calibration images (``[1, 3, h, w]``, std 50)."""
    rng = np.random.default_rng(0)
    return rng, [(rng.standard_normal((1, 3, h, w)) * 50).astype(np.float32) for _ in range(2)]


def _random_student(width: str, h: int, w: int) -> torch.nn.Module:
    """A randomly initialised ShuffleDet whose activations are not degenerate (BN statistics
    randomised, head weights small)."""
    model = randomize_batchnorm(build_model(ARCH[width], image_size=(h, w))).eval()
    torch.nn.init.normal_(model.head.conv.weight, std=0.02)
    return model


def speed(args: argparse.Namespace) -> dict:
    from compressdet.quant.onnx_int8 import ort_session

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    H, W = args.size
    rng, calib = _random_inputs(H, W)
    feed = {"images": (rng.standard_normal((1, 3, H, W)) * 50).astype(np.float32)}
    out: dict = {"machine": cpu_platform(), "size": [H, W], "batch": 1,
                 "threads": args.threads, "runs": args.runs, "note": "alternating blocks of 5 runs in one "
                 "process; ratios are what to read (the machine is shared)",
                 "baseline": "fp32 = the fastest exact fp32 graph (export.fast_fp32 rewrites, ORT_ENABLE_ALL); "
                 "every ratio_to_fp32 is against it; fp32_unrewritten: the model exported as it is",
                 "widths": {}}
    tmp = Path(tempfile.mkdtemp(prefix="quant_speed_"))
    for w in args.widths:
        model = _random_student(w, H, W)
        x = torch.from_numpy(calib[0])
        t0 = time.time()
        # fp32: the fastest exact fp32 graph (the ratios' baseline); fp32_unrewritten: the model as it is
        paths = {"fp32": _export_fp32(model, x, tmp / f"{w}_fp32.onnx"),
                 "fp32_unrewritten": _export_fp32(model, x, tmp / f"{w}_fp32_plain.onnx", rewrites=False)}
        out["fp32_rewrites"] = _fp32_rewrites_applied(model)
        paths["int8_ort_static"] = _ort_static(paths["fp32_unrewritten"], tmp / f"{w}_ortstatic.onnx", calib)
        # the ladder of docs/quantization.md, each step on top of the previous one
        early = ("quantize_before_pad",)  # the pass these steps were first measured with
        fp = dict(head_weights="float")  # these steps had an fp32 head conv
        paths["int8_nofold"] = _pt2e_int8(model, x, calib, tmp / f"{w}_nofold.onnx", fold=False, pad=None,
                                          pool_conv=False, align=None, rewrites=(), **fp)
        paths["int8_fold"] = _pt2e_int8(model, x, calib, tmp / f"{w}_fold.onnx", fold=True, pad=None, pool_conv=False,
                                        align=None, rewrites=(), **fp)
        paths["int8_pad4"] = _pt2e_int8(model, x, calib, tmp / f"{w}_pad4.onnx", fold=True, pad=4, pool_conv=False,
                                        align=None, rewrites=early, **fp)
        # + shortcut avg-pool as depthwise conv * border map (AvgPoolAsConv)
        paths["int8_poolconv"] = _pt2e_int8(model, x, calib, tmp / f"{w}_poolconv.onnx", fold=True, pad=4, align=None,
                                            rewrites=early, **fp)
        # + bottleneck widths padded to a multiple of 16 (session 6's default)
        paths["int8_padded"] = _pt2e_int8(model, x, calib, tmp / f"{w}_padded.onnx", fold=True, pad=4, rewrites=early,
                                          **fp)
        # + the stem conv on column pairs, max-pool in uint8 (pack_stem_columns; session 7's default)
        paths["int8_fast_fp32_head"] = _pt2e_int8(model, x, calib, tmp / f"{w}_fast_fp32_head.onnx", fold=True, pad=4,
                                                  **fp)
        # default: + the head with int8 weights and a float output, as an integer matmul
        # (head_weights: int8, float_out_conv_as_matmul)
        paths["int8_fast"] = _pt2e_int8(model, x, calib, tmp / f"{w}_fast.onnx", fold=True, pad=4)
        # opt-in: int8 head with one output scale per kind (keep_head_float: false), its narrow
        # parts widened (pad_output_channels); and the same without the widening
        paths["int8_fast_head_int8"] = _pt2e_int8(model, x, calib, tmp / f"{w}_headq.onnx", fold=True, pad=4,
                                                  int8_head=True)
        paths["int8_fast_head_int8_narrow"] = _pt2e_int8(model, x, calib, tmp / f"{w}_headq_narrow.onnx", fold=True,
                                                         pad=4, int8_head=True,
                                                         rewrites=("quantize_before_pad", "pack_stem_columns"))
        print(f"[{w}x] graphs built in {time.time() - t0:.0f}s", flush=True)
        sess = {k: ort_session(p, threads=args.threads) for k, p in paths.items()}
        sess["int8_fast_opt_extended"] = ort_session(paths["int8_fast"], threads=args.threads, opt_level="extended")
        sess["fp32_opt_extended"] = ort_session(paths["fp32"], threads=args.threads, opt_level="extended")
        res = _time_blocks(sess, feed, args.runs)
        one = _time_blocks({"fp32_1thread": ort_session(paths["fp32"], threads=1),
                            "int8_fast_1thread": ort_session(paths["int8_fast"], threads=1),
                            "int8_fast_head_int8_1thread": ort_session(paths["int8_fast_head_int8"], threads=1)},
                           feed, max(10, args.runs // 2))
        res.update(one)
        base = res["fp32"]["median_ms"]
        for k, v in res.items():
            ref = res["fp32_1thread"]["median_ms"] if k.endswith("1thread") else base
            v["ratio_to_fp32"] = v["median_ms"] / ref
        out["widths"][f"{w}x"] = res
        print(f"[{w}x] " + "  ".join(f"{k} {v['median_ms']:.1f}ms ({v['ratio_to_fp32']:.2f}x)"
                                     for k, v in res.items()), flush=True)
        atomic_write_json(RESULTS / "quant_speed.json", out)
    return out


def size(args: argparse.Namespace) -> dict:
    """ONNX file sizes: fp32, INT8 without the exporter's rewrites, with an fp32 head conv, the default
    INT8 (int8 head weights, float output) and the per-kind int8 head."""
    torch.manual_seed(0)
    H, W = args.size
    _, calib = _random_inputs(H, W)
    x = torch.from_numpy(calib[0])
    tmp = Path(tempfile.mkdtemp(prefix="quant_size_"))
    out: dict = {"size": [H, W], "unit": "MB (1e6 bytes)", "widths": {}}
    for w in args.widths:
        model = _random_student(w, H, W)
        paths = {"fp32": _export_fp32(model, x, tmp / f"{w}_fp32.onnx", rewrites=False),
                 "int8_no_rewrites": _pt2e_int8(model, x, calib, tmp / f"{w}_plain.onnx", fold=True, pad=4,
                                                rewrites=()),
                 "int8_fast_fp32_head": _pt2e_int8(model, x, calib, tmp / f"{w}_fp32_head.onnx", fold=True, pad=4,
                                                   head_weights="float"),
                 "int8_fast": _pt2e_int8(model, x, calib, tmp / f"{w}_fast.onnx", fold=True, pad=4),
                 "int8_fast_head_int8": _pt2e_int8(model, x, calib, tmp / f"{w}_headq.onnx", fold=True, pad=4,
                                                   int8_head=True)}
        out["widths"][f"{w}x"] = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
        print(f"[{w}x] " + "  ".join(f"{k} {v:.2f} MB" for k, v in out["widths"][f"{w}x"].items()), flush=True)
    atomic_write_json(RESULTS / "quant_size.json", out)
    return out


# ---------------------------------------------------------------------------------------------
# accuracy (evidence protocol: benchmarks/_protocol.py)
_SMOKE_DATA = {"format": "synth", "image_size": [64, 192], "synth": {"num_images": 24, "size": [384, 128]},
               "cache": True, "augment": {"enabled": False}}
# teacher/students: "reuse" (the imitation benchmark's teacher and its chosen 0.25x-I student of each
# seed, same preset) or trained here (smoke). qat_steps fixed or qat_passes over the training set.
# Options each arm chooses from on val (seed 0), as many for every arm, the default first:
# PTQ its calibration-set size, QAT its lr, QAT + imitation its weight (at QAT's lr), the
# equal-budget fp32 control its lr (with QAT + imitation's weight).
PRESETS = {
    "smoke": {"teacher": 4, "student_steps": 4, "qat_steps": 3, "seeds": [0, 1, 2], "weight": 1.0,
              "calib": [8, 4], "qat_lr": [0.001, 0.0005], "imit_weight": [1.0, 0.5], "ft_lr": [0.001, 0.0005],
              "runs": 3, "data": _SMOKE_DATA, "batch": 2, "threads": 1, "channels_last": False, "device": "cpu",
              "feature_cache": False},
    "cpu": {"teacher": "reuse", "qat_passes": 1, "seeds": [0, 1, 2], "calib": [64, 128, 32],
            "qat_lr": [0.001, 0.0005, 0.002], "imit_weight": [1.0, 0.5, 0.25], "ft_lr": [0.001, 0.0005, 0.002],
            "runs": 50, "device": "cpu", "feature_cache": True},
    "gpu": {"teacher": "reuse", "qat_steps": 4000, "seeds": [0, 1, 2], "calib": [64, 128, 32],
            "qat_lr": [0.001, 0.0005, 0.002], "imit_weight": [1.0, 0.5, 0.25], "ft_lr": [0.001, 0.0005, 0.002],
            "runs": 50, "device": "auto", "feature_cache": False},
}
ACC_ARMS = {"student": "fp32 student", "fp32_ft": "fp32 + the same steps (equal budget)", "ptq": "PTQ",
            "qat": "QAT", "qat_imitation": "QAT + imitation"}
INT8_ARMS = ("ptq", "qat", "qat_imitation")




def accuracy(args: argparse.Namespace) -> dict:
    import copy
    import math
    import statistics

    from _protocol import (
        best,
        chosen_line,
        claim,
        export_fast_fp32,
        history,
        isolated_ms,
        plot_learning_curves,
        protocol_keys,
        test_map,
    )
    from imitation_gain import _run, bench_ledger, model_file, rel_to_root, teacher_feature_cache

    from compressdet._io import sha256_file
    from compressdet.data import build_dataset, prepare_data
    from compressdet.eval.stats import describe
    from compressdet.eval.table import size_cells
    from compressdet.models import load_model, model_summary
    from compressdet.recipe import DataConfig

    p = copy.deepcopy(PRESETS[args.preset])
    if args.seeds:
        p["seeds"] = list(range(args.seeds))
    seeds, s0 = p["seeds"], p["seeds"][0]
    work = Path(args.work or ROOT / "benchmarks" / ".quant") / args.preset
    work.mkdir(parents=True, exist_ok=True)
    ledger = bench_ledger("quant", args)
    test_dir = ledger.test_dir or work / "test_eval"
    t_start = time.perf_counter()
    if p["teacher"] == "reuse":
        from _reuse import imitation_students

        r = imitation_students(args.imitation_results)
        if r["preset"] != args.preset:
            raise SystemExit(f"{args.imitation_results}: from the imitation benchmark's '{r['preset']}' preset; run "
                             f"benchmarks/imitation_gain.py --preset {args.preset} first (or pass --imitation-results)")
        missing = [sd for sd in seeds if sd not in r["students"]]
        if missing:
            raise SystemExit(f"{args.imitation_results}: no 0.25x-I student for seeds {missing}")
        s = {k: r[k] for k in ("data", "batch", "threads", "channels_last", "eval_images")}
        teacher, w_student = Path(r["teacher"]), r["best_weight"]
        students = {sd: r["students"][sd] for sd in seeds}
        student_hist, student_steps = r["student_history"], r["student_steps"]
        source = ("the imitation benchmark's teacher and chosen 0.25x-I student of each seed "
                  f"({rel_to_root(args.imitation_results)})")
    else:
        s = {"data": p["data"], "batch": p["batch"], "threads": p["threads"], "channels_last": p["channels_last"],
             "eval_images": None}
        teacher, w_student, students, student_hist, student_steps = None, p["weight"], {}, {}, p["student_steps"]
        source = f"trained here: 1x teacher {p['teacher']} steps, 0.25x-I students {p['student_steps']} steps"
    data_cfg = DataConfig(**s["data"])
    prepare_data(data_cfg)
    n = {split: len(build_dataset(data_cfg, split, train=False)) for split in ("train", "val", "test")}
    qat_steps = int(p["qat_steps"]) if p.get("qat_steps") else max(2, math.ceil(p["qat_passes"] * n["train"] / s["batch"]))
    hw = list(s["data"]["image_size"])
    base = {"device": p["device"], "data": s["data"]}
    ev = {"batch_size": 16, "num_images_logged": 0, **({"max_images": s["eval_images"]} if s["eval_images"] else {})}

    def sched(steps: int, lr: float, n_evals: int = 1) -> dict:
        every = max(steps // n_evals, 1)
        out = {"steps": steps, "batch_size": s["batch"], "lr": lr, "eval_every": every, "checkpoint_every": every,
               "log_every": min(20, steps), "channels_last": s["channels_last"]}
        return {**out, "threads": s["threads"]} if s["threads"] else out

    if teacher is None:  # smoke: a tiny teacher and one imitation student per seed, trained here
        tr = {**base, "seed": 0, "stages": [{"name": "teacher", "kind": "train", "model": {"arch": "shuffledet_1x"},
                                             "schedule": sched(p["teacher"], 0.02), "eval": ev}]}
        tr["name"] = f"teacher-{_digest(tr)}"
        man = _run(tr, work, ledger)
        teacher = model_file(work, man, "teacher", ledger)
    tstage = {"name": "teacher", "kind": "model_file", "path": str(teacher), "sha256": sha256_file(teacher)}
    key = _digest({"t": tstage["sha256"], "p": p, "s": s})
    for sd in seeds:
        if sd in students:
            continue
        st = {"name": "student", "kind": "train", "model": {"arch": "shuffledet_0.25x"}, "teacher": "teacher",
              "imitation": {"weight": w_student}, "schedule": sched(student_steps, 0.02, 2), "eval": ev}
        man = _run({**base, "seed": sd, "name": f"student-s{sd}-{key}", "stages": [tstage, st]}, work, ledger)
        students[sd] = model_file(work, man, "student", ledger)
        student_hist[sd] = history(man["stages"]["student"]["metrics"])

    def student_val(sd: int) -> float:  # the float student on val, with the evaluator of the int8 stages
        return test_map(students[sd], s["data"], test_dir, split="val", max_images=s["eval_images"])["map40"]

    def arm(name: str, sd: int, **setting) -> dict:
        """One arm on seed ``sd``'s student: its run (resumed), val metrics and test evaluations."""
        sf = students[sd]
        stages = [tstage, {"name": "student", "kind": "model_file", "path": str(sf), "sha256": sha256_file(sf)}]
        if name == "ptq":
            st = {"name": "ptq", "kind": "ptq", "from": "student", "calibration_draw": "random",
                  "quant": {"calibration_images": setting["calib"]}, "eval": ev}
        elif name == "fp32_ft":
            st = {"name": name, "kind": "train", "from": "student", "teacher": "teacher",
                  "imitation": {"weight": setting["weight"]}, "schedule": sched(qat_steps, setting["lr"], 2), "eval": ev}
        else:
            # channels_last off for the fake-quant graph (as the QAT stages always ran)
            st = {"name": name, "kind": "qat", "from": "student", "eval": ev,
                  "schedule": {**sched(qat_steps, setting["lr"]), "channels_last": False}}
            if name == "qat_imitation":
                st.update(teacher="teacher", imitation={"weight": setting["weight"]})
        tag = "-".join(f"{k}{v}" for k, v in setting.items())
        man = _run({**base, "seed": sd, "name": f"{name}-{tag}-s{sd}-{key}", "stages": stages + [st]}, work, ledger)
        out = {"val": man["stages"][name]["metrics"], "setting": setting}
        if name in INT8_ARMS:
            onnx, program = (model_file(work, man, name, ledger, key) for key in ("onnx_int8", "quantized"))
            out["model"], out["program"] = rel_to_root(onnx), str(program)
        else:
            out["model"] = rel_to_root(model_file(work, man, name, ledger))
        return out

    def evaluate(name: str, r: dict) -> None:
        """The test split, once, on a chosen run (after every selection is made)."""
        if name in INT8_ARMS:
            r["test"] = test_map(Path(r.pop("program")), s["data"], test_dir, kind="int8")
            r["test_ort"] = test_map(ROOT / r["model"], s["data"], test_dir, kind="ort")
        else:
            r["test"] = test_map(ROOT / r["model"], s["data"], test_dir)

    runs: dict[str, dict[int, dict]] = {a: {} for a in ACC_ARMS}
    sweeps, chosen = {}, {}
    t0 = time.perf_counter()
    with teacher_feature_cache(work / "feature_cache", n["train"], enabled=p["feature_cache"]):
        for sd in seeds:
            runs["student"][sd] = {"val": {"map40": student_val(sd), "eval_history": student_hist.get(sd, [])},
                                   "model": rel_to_root(students[sd]), "test": test_map(students[sd], s["data"], test_dir)}

        def select(name: str, option: str, options: list, **fixed) -> dict:
            tried = {o: arm(name, s0, **fixed, **{option: o}) for o in options}
            scores = {str(o): r["val"]["map40"] for o, r in tried.items()}
            o = best(options, scores)
            runs[name][s0], sweeps[name], chosen[name] = tried[o], {option: scores}, {**fixed, option: o}
            return chosen[name]

        select("ptq", "calib", p["calib"])
        lr_q = select("qat", "lr", p["qat_lr"])["lr"]
        w_q = select("qat_imitation", "weight", p["imit_weight"], lr=lr_q)["weight"]
        select("fp32_ft", "lr", p["ft_lr"], weight=w_q)
        for sd in seeds[1:]:
            for name in ("ptq", "qat", "qat_imitation", "fp32_ft"):
                runs[name][sd] = arm(name, sd, **chosen[name])
    train_minutes = (time.perf_counter() - t0) / 60
    for name in ("ptq", "qat", "qat_imitation", "fp32_ft"):  # only the chosen runs meet the test split
        for r in runs[name].values():
            evaluate(name, r)

    test = {a: {sd: r["test"]["map40"] for sd, r in by.items()} for a, by in runs.items()}
    ort = {a: {sd: runs[a][sd]["test_ort"]["map40"] for sd in seeds} for a in INT8_ARMS}
    val = {a: {sd: r["val"]["map40"] for sd, r in by.items()} for a, by in runs.items()}
    claims = {"ptq_map_drop": claim(test["student"], test["ptq"], seeds),
              "qat_map_drop": claim(test["student"], test["qat_imitation"], seeds),
              "qat_no_imitation_map_drop": claim(test["student"], test["qat"], seeds),
              "qat_map_drop_vs_equal_budget": claim(test["fp32_ft"], test["qat_imitation"], seeds),
              "ptq_map_drop_vs_equal_budget": claim(test["fp32_ft"], test["ptq"], seeds),
              "imitation_effect_in_qat": claim(test["qat_imitation"], test["qat"], seeds),
              "ort_vs_torch": claim(ort["qat_imitation"], test["qat_imitation"], seeds)}
    ort_vs_torch_by_arm = {a: claim(ort[a], test[a], seeds) for a in INT8_ARMS}

    # speed on seed s0's trained models: the fastest exact fp32 graph vs the INT8 graph, isolated processes
    from compressdet.quant.onnx_int8 import check_int8_graph

    student, _ = load_model(students[s0])
    student.eval()
    graphs = {"run": {"fp32": work / "onnx" / f"student-s{s0}-{sha256_file(students[s0])[:12]}-{hw[0]}x{hw[1]}.onnx",
                      "int8": ROOT / runs["qat_imitation"][s0]["model"]}}
    full = work / "onnx" / f"student-s{s0}-{sha256_file(students[s0])[:12]}-384x1248"
    graphs["384x1248"] = {"fp32": full.with_suffix(".fp32.onnx"), "int8": full.with_suffix(".int8.onnx")}
    rewrites = True
    for label, size in (("run", hw), ("384x1248", [384, 1248])):
        if not graphs[label]["fp32"].is_file():
            rewrites = export_fast_fp32(student, graphs[label]["fp32"], size)["fp32_rewrites"]
    if not graphs["384x1248"]["int8"].is_file():  # same network and exporter default, calibrated on random images
        _, calib = _random_inputs(384, 1248)
        _pt2e_int8(student, torch.from_numpy(calib[0]), calib, graphs["384x1248"]["int8"], fold=True, pad=4)
    check_int8_graph(graphs["384x1248"]["int8"])
    ms = {lb: isolated_ms(g, work / "latency", runs=args.runs or p["runs"], threads=args.threads)
          for lb, g in graphs.items()}
    speed = {lb: m["fp32"]["median_ms"] / m["int8"]["median_ms"] for lb, m in ms.items()}

    curves = {"fp32 student (0.25x-I)": {sd: list(student_hist.get(sd, [])) for sd in seeds}}
    curves["fp32 + same steps"] = {sd: [(student_steps + st, v) for st, v in history(runs["fp32_ft"][sd]["val"])]
                                   for sd in seeds}
    for a in INT8_ARMS:  # int8 stages are evaluated once, at their end (QAT trains without val evaluations)
        end = student_steps + (0 if a == "ptq" else qat_steps)
        curves[f"{ACC_ARMS[a]} (final val)"] = {sd: [(end, val[a][sd])] for sd in seeds}
    plot_learning_curves(curves, RESULTS / "quant_curves.png",
                         title=f"INT8 benchmark ({args.preset}): val mAP40 (PyTorch) while training")
    mean = lambda d: statistics.mean(d[sd] for sd in seeds)  # noqa: E731
    flops, params = size_cells(model_summary(student, tuple(hw)))
    result = {
        "preset": args.preset, **protocol_keys(seeds), "image_size": hw, "map_metric": "official AP40 (%)",
        "map": {ACC_ARMS[a]: mean(test[a]) for a in ACC_ARMS},
        "ort_map": {ACC_ARMS[a]: mean(ort[a]) for a in INT8_ARMS},
        "map40": {a: [test[a][sd] for sd in seeds] for a in ACC_ARMS},
        "ort_map40": {a: [ort[a][sd] for sd in seeds] for a in INT8_ARMS},
        "val_map40": {a: [val[a][sd] for sd in seeds] for a in ACC_ARMS},
        "claims": claims, **{k: c["mean"] for k, c in claims.items()},
        "ort_vs_torch_by_arm": ort_vs_torch_by_arm,
        "ort_vs_torch_map_drop": {ACC_ARMS[a]: -c["mean"] for a, c in ort_vs_torch_by_arm.items()},
        "fp32_equal_budget_map40": mean(test["fp32_ft"]),
        "int8_speedup": speed["384x1248"], "int8_speedup_at_run_size": speed["run"],
        "latency_ms": {lb: {k: v["median_ms"] for k, v in m.items()} for lb, m in ms.items()},
        "int8_speedup_note": (f"fast exact fp32 ONNX (export_onnx, fp32_rewrites) ms / INT8 ONNX ms of seed {s0}'s "
                              "trained models, batch 1, ORT_ENABLE_ALL, each graph in a process of its own "
                              "(compare_onnx_isolated); at the run's size the INT8 graph is QAT + imitation's own, "
                              "at 384x1248 the same student through the exporter's default PT2E chain (random "
                              "calibration: ORT's int8 kernels do not depend on the values); > 1: INT8 faster"),
        "fp32_rewrites": rewrites, "threads": args.threads, "runs": args.runs or p["runs"],
        "chosen": chosen, "sweeps_seed0_val": sweeps,
        "steps": {"qat": qat_steps, "student": student_steps, "batch": s["batch"],
                  "qat_passes": qat_steps * s["batch"] / n["train"]},
        "data": {"train_images": n["train"], "val_images": n["val"], "test_images": n["test"], "image_size": hw,
                 "synth": s["data"].get("synth")},
        "models_source": source, "teacher": {"model": rel_to_root(teacher), "sha256": tstage["sha256"]},
        "ledger": {"path": rel_to_root(ledger.root), "runs": ledger.entries()} if ledger.root else None,
        "students": {str(sd): str(f) for sd, f in students.items()},
        "test_ap40_seed0": {a: runs[a][s0]["test"]["ap40"] for a in ACC_ARMS},
        "eval_history": {k: {str(sd): v for sd, v in by.items()} for k, by in curves.items()},
        "flops": flops, "params": params,
        "train_minutes_this_invocation": train_minutes, "minutes": (time.perf_counter() - t_start) / 60,
        "command": f"python benchmarks/quant.py accuracy --preset {args.preset}",
    }
    atomic_write_json(RESULTS / "quant.json", result)
    md = [f"# INT8: PTQ vs QAT ({args.preset} preset)", "", f"`{result['command']}`", "",
          f"SynthKITTI {n['train']} train / {n['val']} val (every selection) / {n['test']} test (reported once), "
          f"{hw[0]}x{hw[1]}, batch {s['batch']}; QAT and the equal-budget fp32 control {qat_steps} steps "
          f"({result['steps']['qat_passes']:.1f} passes); seeds {seeds}; models: {source}.", "",
          "| model | chosen on val (seed 0) | test mAP40 PyTorch per seed | mean | ORT per seed | mean |",
          "|---|---|---|---|---|---|"]
    for a, label in ACC_ARMS.items():
        o = (f"{', '.join(f'{ort[a][sd]:.2f}' for sd in seeds)} | {mean(ort[a]):.2f}" if a in ort else "- | -")
        md.append(f"| {label} | {chosen.get(a, '-')} | {', '.join(f'{test[a][sd]:.2f}' for sd in seeds)} | "
                  f"{mean(test[a]):.2f} | {o} |")
    md += [""] + [f"- {k}: {describe(c)}" for k, c in claims.items()]
    md += [f"- int8_speedup (fast exact fp32 / INT8, isolated processes): {speed['384x1248']:.2f}x at 384x1248, "
           f"{speed['run']:.2f}x at {hw[0]}x{hw[1]}",
           f"- chosen on val: {chosen_line(chosen, sweeps)}",
           "- learning curves: quant_curves.png (QAT arms: their final val mAP; QAT trains without val evaluations)"]
    atomic_write_text(RESULTS / "quant.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return result


def _forget_stale(recipe, run_dir: Path) -> list[str]:
    """Mark finished stages whose settings changed since they ran (a new ``QuantConfig`` default, say)
    pending, so the resumed run re-runs them instead of refusing; returns their names."""
    from compressdet.pipeline import MANIFEST, recipe_fingerprints

    path = run_dir / MANIFEST
    if not path.exists():
        return []
    man = json.loads(path.read_text())
    stale = []
    for name, fp in recipe_fingerprints(recipe).items():
        rec = man["stages"].get(name, {})
        if rec.get("status") == "done" and rec.get("fingerprint") not in (None, fp):
            rec["status"] = "stale"
            stale.append(name)
    if stale:
        atomic_write_json(path, man)
    return stale



# ---------------------------------------------------------------------------------------------
# head: fp32 head conv vs int8 weights with a float output (default) vs int8 output, one scale per kind or shared
HEAD_MODES = {"fp32 head conv": {"head_weights": "float"},
              "int8 weights, float output (default)": {},
              "int8 head, per-kind scales": {"keep_head_float": False, "head_int8": "per_kind"},
              "int8 head, one shared scale": {"keep_head_float": False, "head_int8": "shared"}}


def head(args: argparse.Namespace) -> dict:
    """PTQ of a trained student with each head mode; mAP as the PyTorch int8 program and in ORT."""
    import yaml

    from compressdet._io import sha256_file
    from compressdet.pipeline import Pipeline
    from compressdet.recipe import parse_recipe

    torch.set_num_threads(args.threads)
    src = Path(args.run)
    src_recipe = yaml.safe_load((src / "recipe.yaml").read_text())
    model = src / args.stage / "model.pt"
    sha = sha256_file(model)
    ev = {"max_images": args.eval_images, "batch_size": 16, "num_images_logged": 0}
    stages = [{"name": "student", "kind": "model_file", "path": str(model.resolve()), "sha256": sha}]
    names = {}
    for i, (label, quant) in enumerate(HEAD_MODES.items()):
        names[label] = f"ptq_{i}"
        stages.append({"name": f"ptq_{i}", "kind": "ptq", "from": "student", "eval": ev,
                       "quant": {"calibration_images": args.calib, **quant}})
    recipe = parse_recipe(yaml.safe_dump({"name": "quant_head", "seed": 0, "device": "cpu",
                                          "data": src_recipe["data"], "stages": stages}, sort_keys=False),
                          source="benchmarks/quant.py head")
    work = ROOT / "benchmarks" / ".quant_head" / sha[:12]
    _forget_stale(recipe, work / "run")
    run_dir = Pipeline(recipe, work / "run", resume=True).run()
    st = json.loads((run_dir / "manifest.json").read_text())["stages"]
    base = st[names["fp32 head conv"]]["metrics"]["map40"]
    rows = {}
    for label, name in names.items():
        met = st[name]["metrics"]
        rows[label] = {"map40": met["map40"], "ort_map40": met["ort_map40"], "drop_vs_fp32_head": base - met["map40"]}
    shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
    out = {"student": str(shown), "student_sha256": sha, "image_size": src_recipe["data"]["image_size"],
           "eval_images": args.eval_images, "calibration_images": args.calib, "method": "PTQ (histogram)",
           "rows": rows}
    atomic_write_json(RESULTS / "quant_head.json", out)
    md = [f"PTQ of `{shown}` ({src_recipe['data']['image_size'][0]}x{src_recipe['data']['image_size'][1]}, "
          f"{args.eval_images} val images, {args.calib} calibration images)", "",
          "| head | mAP40 (PyTorch int8) | mAP40 (ORT) | drop vs fp32 head conv |", "|---|---|---|---|"]
    md += [f"| {k} | {_f(v['map40'])} | {_f(v['ort_map40'])} | {_f(v['drop_vs_fp32_head'])} |" for k, v in rows.items()]
    atomic_write_text(RESULTS / "quant_head.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return out


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _f1(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    global RESULTS  # --results redirects every sub-command's output
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=None, help="where the JSON/Markdown go (default "
                    "benchmarks/results; give it before the sub-command)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--widths", nargs="+", default=["0.25", "0.5", "1"], choices=list(ARCH))
    s.add_argument("--runs", type=int, default=50)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--size", type=int, nargs=2, default=[384, 1248])
    z = sub.add_parser("size", help="ONNX file sizes, fp32 vs INT8")
    z.add_argument("--widths", nargs="+", default=["0.25", "0.5", "1"], choices=list(ARCH))
    z.add_argument("--size", type=int, nargs=2, default=[384, 1248])
    a = sub.add_parser("accuracy")
    a.add_argument("--preset", choices=list(PRESETS), default="smoke")
    a.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for the latency ratios")
    a.add_argument("--work", default=None, help="run folders, test evaluations and timings, resumed on re-runs "
                   "(default benchmarks/.quant/<preset>)")
    a.add_argument("--imitation-results", type=Path, default=RESULTS / "imitation_gain.json",
                   help="(cpu/gpu) the imitation benchmark's results JSON whose teacher and students are reused")
    a.add_argument("--seeds", type=int, help="(checks only) number of paired seeds (default 3)")
    a.add_argument("--ledger", type=Path, help="committed record of finished runs (default: "
                   "benchmarks/ledger/quant/<preset> for cpu/gpu, none for smoke)")
    a.add_argument("--no-ledger", action="store_true", help="neither read nor write the ledger")
    a.add_argument("--runs", type=int, default=None, help="latency runs per graph (preset: 50)")
    h = sub.add_parser("head", help="PTQ with a float head vs int8 heads (per-kind / shared scale)")
    h.add_argument("--run", default=str(ROOT / "benchmarks" / ".prune_cpu" / "run"),
                   help="a finished run folder holding the student (default: the prune benchmark's cpu run)")
    h.add_argument("--stage", default="student", help="the stage of --run whose model.pt is quantized")
    h.add_argument("--eval-images", type=int, default=1000)
    h.add_argument("--calib", type=int, default=64)
    h.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    RESULTS = args.results or RESULTS
    RESULTS.mkdir(parents=True, exist_ok=True)
    {"speed": speed, "size": size, "accuracy": accuracy, "head": head}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
