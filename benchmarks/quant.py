"""INT8 on CPU: PTQ vs QAT (without / with imitation) mAP, and ONNX Runtime latency fp32 vs INT8.

Two parts:

* ``speed``: randomly initialised ShuffleDets (BN statistics randomised so activations are not
  degenerate) at batch 1, 384x1248; every graph variant of the speed study (docs/quantization.md)
  timed in alternating blocks of runs in one process (the machine is shared: ratios inside one run
  are what counts; ``compressdet.bench.latency.compare_latency``), median of ``--runs``; writes
  benchmarks/results/quant_speed.json.
* ``accuracy``: a pipeline on SynthKITTI: teacher (1x) -> 0.25x student with imitation -> PTQ,
  QAT without imitation, QAT with imitation; mAP (official, AP40) of each as the PyTorch int8
  program and as the ONNX graph under ONNX Runtime, plus ORT latency at the run's image size;
  writes benchmarks/results/quant.{json,md}.

    .venv/bin/python benchmarks/quant.py speed [--widths 0.25 0.5 1] [--runs 50] [--threads 2]
    .venv/bin/python benchmarks/quant.py accuracy --preset smoke|full
    .venv/bin/python benchmarks/quant.py accuracy --preset cpu --qat-steps 200
    .venv/bin/python benchmarks/quant.py head [--run benchmarks/.prune_cpu/run --stage student]
    .venv/bin/python benchmarks/quant.py size [--widths 0.25 0.5 1]

``head``: PTQ of a trained student (default: the prune benchmark's cpu run) with the float head,
the int8 head with one output scale per kind, and the int8 head with one shared scale;
benchmarks/results/quant_head.{json,md}.

``cpu`` trains nothing float: it starts from the imitation benchmark's teacher and its seed-0
imitation student (``benchmarks/_reuse.py``; same SynthKITTI set, input size and val subset) and
only runs PTQ and the two QATs (``--qat-steps``, batch and threads of the imitation run). The fp32
row is that student evaluated here with the same evaluator settings as the int8 stages.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from compressdet._io import atomic_write_json, atomic_write_text
from compressdet.models import build_model
from compressdet.quant.ptq import randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCH = {"0.25": "shuffledet_0.25x", "0.5": "shuffledet_0.5x", "1": "shuffledet_1x"}


# ---------------------------------------------------------------------------------------------
# speed
def _export_fp32(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["head"])
    return path


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
    out: dict = {"machine": platform.processor() or platform.machine(), "size": [H, W], "batch": 1,
                 "threads": args.threads, "runs": args.runs, "note": "alternating blocks of 5 runs in one "
                 "process; ratios are what to read (the machine is shared)", "widths": {}}
    tmp = Path(tempfile.mkdtemp(prefix="quant_speed_"))
    for w in args.widths:
        model = _random_student(w, H, W)
        x = torch.from_numpy(calib[0])
        t0 = time.time()
        paths = {"fp32": _export_fp32(model, x, tmp / f"{w}_fp32.onnx")}
        paths["int8_ort_static"] = _ort_static(paths["fp32"], tmp / f"{w}_ortstatic.onnx", calib)
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
        paths = {"fp32": _export_fp32(model, x, tmp / f"{w}_fp32.onnx"),
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
# accuracy
PRESETS = {
    "smoke": dict(image_size=[64, 192], num_images=32, max_val=16, teacher_steps=20, student_steps=20,
                  qat_steps=8, batch=8, calib=16, runs=50),
    "full": dict(image_size=[384, 1248], num_images=2000, max_val=500, teacher_steps=20000, student_steps=20000,
                 qat_steps=2000, batch=32, calib=64, runs=100),
    "cpu": dict(calib=64, runs=50),  # the rest comes from the imitation benchmark's run (_reuse.py)
}


def _cpu_recipe(reuse: dict, qat_steps: int) -> dict:
    """PTQ, QAT and QAT + imitation of the imitation benchmark's student, its teacher guiding."""
    ev = {"batch_size": 16, "num_images_logged": 0}
    if reuse["eval_images"]:
        ev["max_images"] = reuse["eval_images"]
    sched = {"steps": qat_steps, "batch_size": reuse["batch"], "lr": 0.001, "checkpoint_every": max(qat_steps // 4, 1),
             "eval_every": qat_steps, "log_every": min(20, qat_steps)}
    if reuse["threads"]:
        sched["threads"] = reuse["threads"]
    student = reuse.get("student_stage") or {"name": "student", "kind": "model_file", "path": str(reuse["student"]),
                                             "sha256": reuse["student_sha256"]}
    return {"name": "quant_bench_cpu", "seed": 0, "device": "cpu", "data": reuse["data"], "stages": [
        {"name": "teacher", "kind": "model_file", "path": str(reuse["teacher"]), "sha256": reuse["teacher_sha256"]},
        student,
        {"name": "ptq", "kind": "ptq", "from": "student", "quant": {"calibration_images": PRESETS["cpu"]["calib"]},
         "eval": ev},
        {"name": "qat", "kind": "qat", "from": "student", "schedule": sched, "eval": ev},
        {"name": "qat_imitation", "kind": "qat", "from": "student", "teacher": "teacher",
         "imitation": {"weight": reuse["best_weight"]}, "schedule": sched, "eval": ev},
        # equal-budget control: the float student trained exactly like QAT + imitation, so steps that
        # still improve a short CPU student do not flatter qat_map_drop
        {"name": "fp32_ft", "kind": "train", "from": "student", "teacher": "teacher",
         "imitation": {"weight": reuse["best_weight"]}, "schedule": sched, "eval": ev},
        # the opt-in int8 head (one output scale per kind), trained like QAT + imitation
        {"name": "qat_imitation_head_int8", "kind": "qat", "from": "student", "teacher": "teacher",
         "imitation": {"weight": reuse["best_weight"]}, "quant": {"keep_head_float": False}, "schedule": sched,
         "eval": ev},
        # the head conv in fp32 (head_weights: float; the default until session 8), trained the same way
        {"name": "qat_imitation_fp32_head", "kind": "qat", "from": "student", "teacher": "teacher",
         "imitation": {"weight": reuse["best_weight"]}, "quant": {"head_weights": "float"}, "schedule": sched,
         "eval": ev}]}


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


def _run_artifacts(run: Path, student_width: str | None) -> dict:
    """:func:`_cpu_recipe`'s inputs from any finished pipeline run with a ``teacher`` and an imitation
    ``student`` stage (e.g. the prune benchmark's cpu run). ``student_width``: train a student of
    that width here with the run's student schedule instead of reusing the run's student."""
    import yaml

    from compressdet._io import sha256_file

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    man = json.loads((run / "manifest.json").read_text())["stages"]
    stages = {s["name"]: s for s in recipe["stages"]}
    for name in ("teacher", "student"):
        if man.get(name, {}).get("status") != "done":
            raise SystemExit(f"{run}: stage '{name}' is not done; finish that run first")
    teacher = run / man["teacher"]["artifacts"]["model"]["path"]
    src = stages["student"]
    out = {"preset": f"run {run}", "teacher": teacher, "teacher_sha256": sha256_file(teacher),
           "best_weight": (src.get("imitation") or {}).get("weight", 1.0), "data": recipe["data"],
           "eval_images": (src.get("eval") or {}).get("max_images"), "batch": src["schedule"]["batch_size"],
           "threads": src["schedule"].get("threads"), "channels_last": src["schedule"].get("channels_last", False)}
    if student_width:
        stage = {k: v for k, v in src.items() if k not in ("from",)}
        stage["model"] = ARCH[student_width]
        out["student_stage"] = stage
        out["student_label"] = f"a {student_width}x-I student trained here with the student schedule of `{run}`"
        out["student_key"] = f"{out['teacher_sha256'][:8]}-{student_width}x"
    else:
        student = run / man["student"]["artifacts"]["model"]["path"]
        out.update(student=student, student_sha256=sha256_file(student), student_label=f"the student of `{run}`")
        out["student_key"] = out["student_sha256"][:12]
    return out


def _evaluate_fp32(recipe, stage: str, model) -> dict:
    """The float model with the evaluator settings of the int8 stage ``stage`` (same val subset)."""
    from compressdet.engine.launch import build_evaluate_fn

    cfg = recipe.stage(stage)
    fn = build_evaluate_fn(recipe.data, eval_cfg=cfg.eval.model_copy(update={"num_images_logged": 0}),
                           postprocess=cfg.postprocess)
    with torch.no_grad():
        res = fn(model.eval(), 0)
    return {"map40": res["map40"], "map11": res["map11"], "ap40": res["ap"]}


def _recipe_text(p: dict, cache: str) -> str:
    h, w = p["image_size"]
    sched = "{steps: %d, batch_size: %d, lr: %s, eval_every: %d, checkpoint_every: %d, log_every: 10}"
    return f"""name: quant_bench
seed: 0
data:
  format: synth
  image_size: [{h}, {w}]
  synth: {{num_images: {p['num_images']}, size: [1242, 375], seed: 0, cache_dir: {cache}}}
  max_val_images: {p['max_val']}
stages:
  - name: teacher
    kind: train
    model: shuffledet_1x
    schedule: {sched % (p['teacher_steps'], p['batch'], 0.02, p['teacher_steps'], p['teacher_steps'])}
  - name: student
    kind: train
    model: shuffledet_0.25x
    teacher: teacher
    imitation: {{weight: 1.0}}
    schedule: {sched % (p['student_steps'], p['batch'], 0.02, p['student_steps'], p['student_steps'])}
  - name: ptq
    kind: ptq
    from: student
    quant: {{calibration_images: {p['calib']}}}
  - name: qat
    kind: qat
    from: student
    quant: {{calibration_images: {p['calib']}}}
    schedule: {sched % (p['qat_steps'], p['batch'], 0.001, p['qat_steps'], p['qat_steps'])}
  - name: qat_imitation
    kind: qat
    from: student
    teacher: teacher
    imitation: {{weight: 1.0}}
    schedule: {sched % (p['qat_steps'], p['batch'], 0.001, p['qat_steps'], p['qat_steps'])}
"""


def accuracy(args: argparse.Namespace) -> dict:
    from compressdet.eval import format_table
    from compressdet.eval.table import result_from_ap40, size_cells
    from compressdet.models import model_summary
    from compressdet.pipeline import Pipeline
    from compressdet.quant.onnx_int8 import ort_session
    from compressdet.recipe import parse_recipe

    p = dict(PRESETS[args.preset])
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else None
    reuse = None
    if args.preset == "cpu":
        import yaml
        from _reuse import imitation_artifacts

        if args.from_run:
            reuse = _run_artifacts(Path(args.from_run), args.student_width)
        else:
            reuse = imitation_artifacts(args.imitation_results)
            reuse.update(student_label=f"the imitation benchmark's seed-0 0.25x-I student (w={reuse['best_weight']})",
                         student_key=reuse["student_sha256"][:12])
        # kept and resumed; one folder per reused student and step count, so a re-trained
        # imitation benchmark or another --qat-steps starts fresh instead of clashing with the old run
        work = work or ROOT / "benchmarks" / ".quant_cpu" / f"{reuse['student_key']}-q{args.qat_steps}"
        text = yaml.safe_dump(_cpu_recipe(reuse, args.qat_steps), sort_keys=False)
        p["image_size"] = list(reuse["data"]["image_size"])
    else:
        work = work or Path(tempfile.mkdtemp(prefix="quant_bench_"))
        text = _recipe_text(p, str(work / "synth"))
    recipe = parse_recipe(text, source="benchmarks/quant.py")
    stale = _forget_stale(recipe, work / "run")
    if stale:
        print(f"settings changed since they ran, re-running: {', '.join(stale)}", flush=True)
    run_dir = Pipeline(recipe, work / "run", resume=True).run()  # reruns skip done stages
    man = json.loads((run_dir / "manifest.json").read_text())
    st = man["stages"]
    from datetime import datetime

    minutes = sum((datetime.fromisoformat(r["finished"]) - datetime.fromisoformat(r["started"])).total_seconds()
                  for r in st.values() if r.get("started") and r.get("finished")) / 60

    def m(name, key="map40"):
        return st[name].get("metrics", {}).get(key)

    from compressdet.models import load_model

    def artifact(stage, key):
        return run_dir / st[stage]["artifacts"][key]["path"]

    student, _ = load_model(artifact("student", "model"))
    if reuse is not None:  # evaluate the float student exactly like the int8 stages (same val subset)
        st["student"]["metrics"] = _evaluate_fp32(recipe, "qat_imitation", student)
    fp32 = m("student")
    key = {"fp32 student": "student", "PTQ": "ptq", "QAT": "qat", "QAT + imitation": "qat_imitation"}
    if "qat_imitation_head_int8" in st:
        key["QAT + imitation, int8 head"] = "qat_imitation_head_int8"
    if "qat_imitation_fp32_head" in st:
        key["QAT + imitation, fp32 head conv"] = "qat_imitation_fp32_head"
    rows = {k: m(stage) for k, stage in key.items()}
    ort_rows = {k: m(stage, "ort_map40") for k, stage in key.items() if stage != "student"}
    # latency of the run's own graphs at its image size (batch 1)
    H, W = p["image_size"]
    x = torch.randn(1, 3, H, W) * 50
    fp32_onnx = _export_fp32(student.eval(), x, work / "student_fp32.onnx")

    sessions = {"student": ort_session(fp32_onnx, threads=args.threads)}
    for s in key.values():
        if s != "student":
            sessions[s] = ort_session(artifact(s, "onnx_int8"), threads=args.threads)
    lat = _time_blocks(sessions, {"images": x.numpy()}, p["runs"])
    result = {
        "preset": args.preset, "image_size": [H, W], "minutes": minutes, "map_metric": "official AP40 (%)",
        "map": rows, "ort_map": ort_rows,
        "ptq_map_drop": None if fp32 is None or rows["PTQ"] is None else fp32 - rows["PTQ"],
        "qat_map_drop": None if fp32 is None or rows["QAT + imitation"] is None else fp32 - rows["QAT + imitation"],
        "qat_no_imitation_map_drop": None if fp32 is None or rows["QAT"] is None else fp32 - rows["QAT"],
        "ort_vs_torch_map_drop": {k: (None if rows[k] is None or ort_rows[k] is None else rows[k] - ort_rows[k])
                                  for k in ort_rows},
        "latency_ms": {("fp32" if k == "student" else k): v["median_ms"] for k, v in lat.items()},
        "int8_speedup_at_run_size": lat["student"]["median_ms"] / lat["qat_imitation"]["median_ms"],
        "threads": args.threads, "runs": p["runs"],
    }
    if "fp32_ft" in st and m("fp32_ft") is not None and rows["QAT + imitation"] is not None:
        result["fp32_equal_budget_map40"] = m("fp32_ft")
        result["qat_map_drop_vs_equal_budget"] = m("fp32_ft") - rows["QAT + imitation"]
        result["ptq_map_drop_vs_equal_budget"] = None if rows["PTQ"] is None else m("fp32_ft") - rows["PTQ"]
    if "QAT + imitation, int8 head" in rows and fp32 is not None and rows["QAT + imitation, int8 head"] is not None:
        result["qat_head_int8_map_drop"] = fp32 - rows["QAT + imitation, int8 head"]
        result["int8_speedup_head_int8_at_run_size"] = (lat["student"]["median_ms"]
                                                        / lat["qat_imitation_head_int8"]["median_ms"])
    if rows.get("QAT + imitation, fp32 head conv") is not None and fp32 is not None:
        result["qat_fp32_head_map_drop"] = fp32 - rows["QAT + imitation, fp32 head conv"]
    if reuse is not None:
        sha = st["student"].get("artifacts", {}).get("model", {}).get("sha256") or reuse.get("student_sha256")
        result["reused"] = {"source": reuse["preset"], "teacher": str(reuse["teacher"]),
                            "teacher_sha256": reuse["teacher_sha256"], "student": reuse["student_label"],
                            "student_sha256": sha, "qat_steps": args.qat_steps,
                            "imitation_weight": reuse["best_weight"]}
    # the latency protocol is batch 1 at 384x1248: the speed study's graphs (same network and
    # rewrites, random weights: ORT's int8 kernels do not depend on the values)
    speed_file = RESULTS / "quant_speed.json"
    width = f"{getattr(student, 'arch', {}).get('width', 0.25):g}x"
    result["int8_speedup_note"] = (f"fp32 ORT ms / INT8 ORT ms, batch 1 at 384x1248, {width} (speed study, "
                                   "benchmarks/results/quant_speed.json); > 1: INT8 faster, the target INT8 <= 0.5x "
                                   "fp32 is a speedup >= 2. *_at_run_size: this run's own graphs at its image size")
    sp = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    if sp.get("widths"):
        result["speed_384x1248"] = {w: {"fp32_ms": r["fp32"]["median_ms"], "int8_ms": r["int8_fast"]["median_ms"],
                                        "ratio": r["int8_fast"]["ratio_to_fp32"],
                                        "int8_head_int8_ms": r.get("int8_fast_head_int8", {}).get("median_ms"),
                                        "ratio_head_int8": r.get("int8_fast_head_int8", {}).get("ratio_to_fp32"),
                                        "ratio_fp32_head": r.get("int8_fast_fp32_head", {}).get("ratio_to_fp32")}
                                    for w, r in sp["widths"].items()}
        result["speed_runs"] = sp.get("runs")
    mine = result.get("speed_384x1248", {}).get(width)
    result["int8_speedup"] = 1 / mine["ratio"] if mine else None
    if mine and mine.get("ratio_head_int8"):
        result["int8_speedup_head_int8"] = 1 / mine["ratio_head_int8"]
    names, results = [], []
    for name, stage in key.items():
        res = st[stage].get("metrics", {})
        if res.get("ap40"):
            names.append(name)
            results.append(result_from_ap40(res["ap40"]))
    # int8 rewrites are exact float graphs of the same network: MACs and params are the student's
    flops, params = size_cells(model_summary(student, (H, W)))
    result["flops"], result["params"] = flops, params
    atomic_write_json(RESULTS / "quant.json", result)
    tables = [format_table(results, models=names, flops=flops, params=params, metrics="ap40",
                           extra=[{"ORT ms": f"{lat[key[n]]['median_ms']:.1f}"} for n in names])] if results else []
    md = [f"# INT8: PTQ vs QAT ({args.preset} preset, SynthKITTI {H}x{W}, {minutes:.1f} min)", "",
          "| model | mAP (PyTorch int8) | mAP (ORT) | ORT latency ms (batch 1, median) |", "|---|---|---|---|"]
    for k, v in rows.items():
        md.append(f"| {k} | {_f(v)} | {_f(ort_rows.get(k, v if k == 'fp32 student' else None))} | "
                  f"{lat[key[k]]['median_ms']:.1f} |")
    if reuse is not None:
        md += ["", f"Teacher from {reuse['preset']} (`{reuse['teacher']}`); student: {reuse['student_label']}; "
                   f"QAT {args.qat_steps} steps each, batch {reuse['batch']}."]
    if "qat_map_drop_vs_equal_budget" in result:
        md += ["", f"Equal-budget control (`fp32_ft`: the float student trained with the QAT + imitation "
                   f"schedule): mAP40 {result['fp32_equal_budget_map40']:.2f}; QAT + imitation vs it: "
                   f"{result['qat_map_drop_vs_equal_budget']:.2f} mAP drop."]
    if args.preset == "smoke":
        md += ["", "Smoke preset: models trained for a few dozen steps at 64x192; mAPs near 0 only show that "
                   "the chain runs. Use `--preset full` for the accuracy targets."]
    md += ["", f"qat_map_drop {_f(result['qat_map_drop'])}, ptq_map_drop {_f(result['ptq_map_drop'])}, "
               f"int8_speedup {_f(result['int8_speedup'])}x (384x1248, {width}; with the int8 head "
               f"{_f(result.get('int8_speedup_head_int8'))}x); at this run's {H}x{W}: "
               f"{result['int8_speedup_at_run_size']:.2f}x", ""]
    if "speed_384x1248" in result:
        md += [f"Latency at 384x1248, batch 1, median of {result['speed_runs']} runs (random-init models, "
               "benchmarks/results/quant_speed.json):", "",
               "| width | fp32 ms | int8 ms (default) | int8/fp32 | fp32 head conv: int8/fp32 | int8 head: ms | int8/fp32 |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {w} | {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | {r['ratio']:.2f} | {_f(r.get('ratio_fp32_head'))} | "
               f"{_f1(r['int8_head_int8_ms'])} | {_f(r['ratio_head_int8'])} |"
               for w, r in result["speed_384x1248"].items()]
    if tables:
        md += ["", "Per class (AP40):", ""] + tables
    atomic_write_text(RESULTS / "quant.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return result


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
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--workdir", default=None, help="run folder, resumed on re-runs (cpu default: "
                   "benchmarks/.quant_cpu/<student sha>-q<steps>; others: a temporary folder)")
    a.add_argument("--qat-steps", type=int, default=200, help="(cpu preset) steps of each QAT stage")
    a.add_argument("--imitation-results", type=Path, default=RESULTS / "imitation_gain.json",
                   help="(cpu preset) the imitation benchmark's results JSON whose models are reused")
    a.add_argument("--from-run", default=None, help="(cpu preset) reuse this finished run's teacher and "
                   "imitation student instead (e.g. benchmarks/.prune_cpu/run)")
    a.add_argument("--student-width", choices=list(ARCH), default=None,
                   help="(with --from-run) train a student of this width with the run's student schedule")
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
