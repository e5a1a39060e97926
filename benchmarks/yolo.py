"""Ultralytics YOLO head to head (issue #45): compressdet's chain against Ultralytics' own distillation and export.

Under the evidence protocol (``benchmarks/_protocol.py``: everything chosen on ``val``, every reported number
measured once on the whole ``test`` split, arms paired by seed) on SynthKITTI, with a YOLO teacher
(``yolov8s``) and a YOLO student (``yolov8n``), both built from Ultralytics' shipped model YAMLs (no weights
downloaded). One teacher, trained once by compressdet, serves both sides (Ultralytics gets it as a checkpoint,
``compressdet.models.yolo.save_ultralytics``). Arms, per paired seed:

1. ``direct``: the student trained by compressdet without distillation (S steps);
2. ``compressdet_distill``: the student distilled by compressdet (S steps); the method is chosen among
   ``fgfi`` / ``pkd`` / ``crosskd`` (each at its default weight) by seed-0 val mAP40, then trained on every seed;
3. ``ultralytics_distill``: the student distilled by Ultralytics' own trainer at its documented settings:
   ``YOLO("yolov8n.yaml").train(data=<the same images as a YOLO dataset YAML>, distill_model=<teacher .pt>,
   epochs=E, batch=B, imgsz=<long side>, seed=<seed>, deterministic=True, device=cpu, workers=0, amp=False,
   plots=False)``: every other argument is ``ultralytics/cfg/default.yaml``'s (``dis: 6.0`` the distillation
   weight, ``optimizer: auto``, ``nbs: 64`` gradient accumulation, 3 warmup epochs, mosaic and its other
   augmentations; ``ultralytics.nn.distill_model.DistillationModel``: a score-weighted L2 on the neck outputs
   P3-P5 through a 2-conv projector, weighted by the teacher's class scores). E epochs = S steps (S is
   E x ceil(train images / B), Ultralytics' batches per epoch). Its checkpoint choice is its own ``best.pt``
   (best fitness on the val split). That it distilled is checked: ``train/dis_loss`` in its ``results.csv``
   is > 0 in every epoch;
4. ``chain``: compressdet's whole chain from the ``compressdet_distill`` student: ``prune`` (uniform, whole-model
   MACs target, distilling from the teacher with the chosen method, P steps) -> ``qat`` (the same distillation,
   Q steps) -> ``deploy`` (``compressdet deploy``'s stage: ORT / OpenVINO fp32, bf16 and INT8 candidates,
   the fastest within ``max_map_drop`` of fp32 on test; its test mAP is the chosen candidate's);
5. ``ultralytics_path``: Ultralytics' distillation as in 3. for E + 1 epochs (= S + P + Q steps: P + Q is one
   epoch, so both paths train the same number of steps), then its own export to OpenVINO INT8 through NNCF,
   ``YOLO(best.pt).export(format="openvino", int8=True, data=<YAML>, imgsz=[H, W], batch=1)`` (what ``yolo export
   format=openvino int8=True`` does; NNCF calibrates on the YAML's val split).

Data: compressdet's arms train on the synth data set itself; Ultralytics' on the same images and splits written
as a YOLO data set (``compressdet data convert --to yolo``, classes car / pedestrian / cyclist as compressdet
trains them, KITTI's other classes dropped as compressdet drops them). compressdet trains at H x W; Ultralytics
trains square at ``imgsz`` = W (its letterboxed mosaic; objects at the same scale as at H x W), so its steps
cost more compute; steps (batches) are equal, not FLOPs. compressdet's students train without augmentation, as
the other benchmarks' students (imitation_gain's presets); Ultralytics with its default augmentation. lr fixed
(compressdet: 0.01 for teacher and students, the prune and QAT stages' defaults; Ultralytics: its ``auto``).

Evaluation, the same for both sides: compressdet's KITTI evaluation (AP40, car / pedestrian / cyclist x E / M / H)
on the whole test split at H x W, compressdet's postprocess (Ultralytics' decode, per-level top-k, per-class NMS).
An Ultralytics ``best.pt`` is loaded through ``model.weights`` (``build_yolo(weights=...)``: every tensor, checked)
and evaluated as a compressdet model file; Ultralytics' exported OpenVINO INT8 IR runs in OpenVINO, fed the test
images as Ultralytics feeds them (RGB / 255 at H x W); its outputs are Ultralytics' decoded ``[N, 4 + C, K]``
(the decode is inside its graph), which go through the same selection and NMS.

Latency: batch 1 at H x W; compressdet's deployed file (``deploy``'s chosen candidate, on its backend) and
Ultralytics' INT8 IR (OpenVINO), each timed in processes of its own, alternating
(``compressdet.bench.latency.time_isolated``); ``latency_ratio`` = compressdet's / Ultralytics' (per seed, and
of the means). The unquantized arms (direct, both distilled: one architecture) get the fp32 student's latency
(ORT, its exact fp32 graph), timed in the same alternation. Ultralytics' graph includes its box decode
(DFL + dist2bbox), compressdet's deployed graph ends at the raw outputs (decode in float outside, as every
compressdet family): noted in the table.

Goal (issue #45): the chain ahead of Ultralytics' path in test mAP with the paired 95% CI above 0, at
equal or lower deployed latency (``latency_ratio`` <= 1); the JSON says whether each half holds.

Writes ``yolo.{json,md}`` into ``--results`` (default ``benchmarks/results`` for ``cpu``; ``smoke`` writes under
its work folder). compressdet's runs are recipe runs named by a digest (in the committed ledger
``benchmarks/ledger/yolo/<preset>`` for ``cpu``: a killed invocation resumes, a finished one is read back);
Ultralytics' runs and exports are cached in the work folder by a digest of their settings (``done.json``), their
sha256 and results recorded in the ledger; test evaluations and timings are cached by the files' sha256.

    python benchmarks/yolo.py --preset smoke   # the plumbing: tiny data, a few steps (minutes)
    python benchmarks/yolo.py --preset cpu     # hours on 2 cores (resumable); latency wants a quiet machine
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _budget  # noqa: E402
import imitation_gain as ig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TEACHER, STUDENT = "yolov8s", "yolov8n"
METHODS = ("fgfi", "pkd", "crosskd")
ARMS = ("direct", "compressdet_distill", "ultralytics_distill", "chain", "ultralytics_path")

PRESETS = {
    "smoke": {"data": {"format": "synth", "image_size": [64, 192], "synth": {"num_images": 24, "size": [384, 128]},
                       "cache": True},
              "teacher_steps": 4, "epochs": 1, "batch": 2, "seeds": [0, 1, 2], "evals": 1, "lr": 0.01,
              "teacher_lr": 0.01, "prune_macs": 0.7, "round_to": 8, "threads": 1, "channels_last": False,
              "max_map_drop": 100.0, "calibration_images": 2, "latency_runs": 2, "latency_rounds": 1,
              "latency_warmup": 1, "latency_threads": 1, "ultralytics_args": {}},
    "cpu": {"data": {"format": "synth", "image_size": [192, 640], "synth": ig._SYNTH_CPU, "cache": True},
            "teacher_passes": 12, "epochs": 3, "batch": 2, "seeds": [0, 1, 2], "evals": 6, "lr": 0.01,
            "teacher_lr": 0.01, "prune_macs": 0.7, "round_to": 8, "threads": 2, "channels_last": True,
            "max_map_drop": 0.5, "calibration_images": 64, "latency_runs": 60, "latency_rounds": 3,
            "latency_warmup": 5, "latency_threads": 2, "ultralytics_args": {}},
}
GOAL = ("compressdet's chain ahead of Ultralytics' path in test mAP40 (paired 95% CI above 0) at equal or lower "
        "deployed latency (latency_ratio <= 1)")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan(p: dict, n_train: int) -> dict:
    """Steps: S = epochs x Ultralytics' batches per epoch (no batch dropped); the chain's prune + QAT
    fine-tuning together one epoch (so Ultralytics' path trains epochs + 1)."""
    nb = math.ceil(n_train / p["batch"])
    s = p["epochs"] * nb
    prune = max(1, nb // 2)
    out = {"batches_per_epoch": nb, "student_steps": s, "epochs": p["epochs"], "prune_steps": prune,
           "qat_steps": max(1, nb - prune), "path_epochs": p["epochs"] + 1}
    out["teacher_steps"] = int(p["teacher_steps"]) if p.get("teacher_steps") else max(
        2, math.ceil(p["teacher_passes"] * n_train / p["batch"]))
    out["chain_steps"] = s + out["prune_steps"] + out["qat_steps"]
    out["path_steps"] = out["path_epochs"] * nb
    return out


# ------------------------------------------------------------------------------------------ the YOLO copy
def yolo_dataset(data_cfg, out: Path) -> Path:
    """The data set's images and splits as an Ultralytics YOLO data set (``data.yaml`` with an absolute
    ``path``), labels restricted to ``data_cfg.classes`` (indices in that order), made once."""
    import yaml

    from compressdet.data import prepare_data
    from compressdet.data.convert import convert

    classes = [c.lower() for c in data_cfg.classes]
    y = out / "data.yaml"
    want = {"path": str(out.resolve()), "train": "images/train", "val": "images/val", "test": "images/test",
            "names": dict(enumerate(classes))}
    if y.is_file() and yaml.safe_load(y.read_text()) == want:
        return y
    if out.exists():
        import shutil

        shutil.rmtree(out)
    convert(prepare_data(data_cfg), src_format=data_cfg.format, dst_format="yolo", out=out, log=lambda *_: None)
    names = yaml.safe_load(y.read_text())["names"]
    keep = {int(i): classes.index(n.lower()) for i, n in names.items() if n.lower() in classes}
    for f in (out / "labels").rglob("*.txt"):
        rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
        rows = [" ".join([str(keep[int(r[0])]), *r[1:]]) for r in rows if int(r[0]) in keep]
        f.write_text("".join(r + "\n" for r in rows))
    y.write_text(yaml.safe_dump(want, sort_keys=False))
    return y


# ------------------------------------------------------------------------------------------ Ultralytics
def _child(job: dict) -> None:
    """In a process of its own: one Ultralytics training or export (``job["kind"]``), its torch threads
    pinned (Ultralytics' ``select_device`` sets its own count for CPU training)."""
    from compressdet.models.yolo import _ultralytics

    _ultralytics("the Ultralytics arm")  # offline, config folder outside $HOME
    import torch
    import ultralytics.utils.torch_utils as tu

    tu.NUM_THREADS = int(job["threads"])
    torch.set_num_threads(int(job["threads"]))
    from ultralytics import YOLO

    if job["kind"] == "train":
        YOLO(job["model"]).train(**job["args"])
        out = None
    else:
        out = str(YOLO(job["model"]).export(**job["args"]))
    Path(job["done"]).write_text(json.dumps({"out": out}))


def _run_child(job: dict, folder: Path) -> dict:
    _budget.check(f"Ultralytics {job['kind']} in {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "job.json"
    spec.write_text(json.dumps(job, indent=1))
    log = folder / "log.txt"
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child", str(spec)], stdout=fh,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}).returncode
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"Ultralytics {job['kind']} failed (exit {rc}, log {log}): " + " | ".join(tail))
    return json.loads(Path(job["done"]).read_text())


def ultralytics_train(work: Path, data_yaml: Path, teacher_pt: Path, *, seed: int, epochs: int, hw, p: dict) -> dict:
    """Ultralytics' distillation of the student (cached by its settings): ``{"best", "dis_loss" (per epoch),
    "args" (what it trained with, from the checkpoint), "folder"}``."""
    from compressdet._io import sha256_file

    args = {"data": str(data_yaml), "distill_model": str(teacher_pt), "epochs": int(epochs), "imgsz": int(max(hw)),
            "batch": p["batch"], "seed": int(seed), "deterministic": True, "device": "cpu", "workers": 0,
            "amp": False, "plots": False, "verbose": False, "exist_ok": True, **p["ultralytics_args"]}
    key = _digest({"a": {k: v for k, v in args.items() if k not in ("data", "distill_model")},
                   "t": sha256_file(teacher_pt), "d": sha256_file(data_yaml), "m": STUDENT, "threads": p["threads"]})
    folder = work / "ultralytics" / f"distill-s{seed}-e{epochs}-{key}"
    done = folder / "done.json"
    if not done.is_file():
        _run_child({"kind": "train", "model": f"{STUDENT}.yaml", "threads": p["threads"], "done": str(done),
                    "args": {**args, "project": str(folder), "name": "train"}}, folder)
    best = folder / "train" / "weights" / "best.pt"
    with open(folder / "train" / "results.csv") as fh:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(fh)]
    import torch

    ck = torch.load(best, map_location="cpu", weights_only=False)
    targs = ck.get("train_args") or {}
    return {"folder": folder, "best": best, "best_sha256": sha256_file(best),
            "dis_loss": [float(r["train/dis_loss"]) for r in rows if "train/dis_loss" in r],
            "args": {k: targs.get(k) for k in ("distill_model", "dis", "epochs", "batch", "imgsz", "optimizer", "lr0",
                                               "nbs", "warmup_epochs", "mosaic", "seed", "deterministic")}}


def ultralytics_export(run: dict, data_yaml: Path, hw, p: dict) -> Path:
    """Ultralytics' OpenVINO INT8 export (NNCF) of ``run``'s best.pt at H x W, batch 1: the IR's ``.xml``."""
    folder = run["folder"] / f"openvino-int8-{hw[0]}x{hw[1]}"
    done = folder / "done.json"
    if not done.is_file():
        import shutil

        folder.mkdir(parents=True, exist_ok=True)
        src = folder / "best.pt"  # Ultralytics writes the IR beside the checkpoint
        shutil.copyfile(run["best"], src)
        _run_child({"kind": "export", "model": str(src), "threads": p["threads"], "done": str(done),
                    "args": {"format": "openvino", "int8": True, "data": str(data_yaml), "imgsz": [int(hw[0]),
                             int(hw[1])], "batch": 1, "device": "cpu"}}, folder)
    out = Path(json.loads(done.read_text())["out"])
    xml = sorted(out.glob("*.xml"))
    if not xml:
        raise SystemExit(f"{out}: Ultralytics' OpenVINO export wrote no .xml")
    return xml[0]


def as_compressdet(best: Path, hw, classes: list[str], folder: Path) -> Path:
    """An Ultralytics ``best.pt`` as a compressdet model file (``model.weights``: every tensor must load)."""
    import torch

    from compressdet._io import sha256_file
    from compressdet.models import save_model
    from compressdet.models.yolo import build_yolo, load_ultralytics_checkpoint

    out = folder / f"{STUDENT}-ultralytics-{sha256_file(best)[:12]}-{hw[0]}x{hw[1]}.pt"
    if out.is_file():
        return out
    model = build_yolo(name=STUDENT, weights=str(best), num_classes=len(classes), image_size=hw, classes=classes)
    src = load_ultralytics_checkpoint(str(best), "best.pt").state_dict()
    have = model.net.state_dict()
    bad = [k for k, v in src.items() if k not in have or have[k].shape != v.shape or not torch.equal(have[k], v.float())]
    if bad or len(src) != len(have):
        raise SystemExit(f"{best}: {len(bad)} tensors did not load into {STUDENT} (e.g. {bad[:3]})")
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model.eval(), out, meta={"classes": list(classes), "source": f"ultralytics {best.name}"})
    return out


class DecodedYolo:
    """Post-processing for an Ultralytics graph whose output is already decoded (``[N, 4 + C, K]``, its
    exported ``Detect``): the float model's selection and NMS (``YoloPostProcessor``) without the decode."""

    family = "yolo"

    def __init__(self, model):
        self._model = model
        self.image_size, self.num_classes = model.image_size, model.num_classes

    def level_shapes(self):
        return self._model.level_shapes()

    def decode(self, outputs):
        return outputs[0].float()

    def postprocessor(self, cfg=None):
        from compressdet.models.contract import postprocess_kwargs
        from compressdet.models.yolo import YoloPostProcessor

        return YoloPostProcessor(self, **postprocess_kwargs(cfg))


def ir_test_map(xml: Path, float_model: Path, data: dict, cache_dir: Path, *, split: str = "test") -> dict:
    """compressdet's evaluation of Ultralytics' exported IR (OpenVINO, CPU), fed as Ultralytics feeds it
    (RGB / 255), decoded outputs through compressdet's selection + NMS; cached by the IR's sha256."""
    from compressdet._io import atomic_write_json, sha256_file

    spec = {"xml": sha256_file(xml), "bin": sha256_file(xml.with_suffix(".bin")), "d": data, "s": split,
            "k": "ultralytics-ir"}
    path = Path(cache_dir) / f"{split}-ir-{_digest(ig_portable(spec))}.json"
    if path.is_file():
        return json.loads(path.read_text())
    import numpy as np
    import torch

    from compressdet.conventions import MEAN_BGR
    from compressdet.export._openvino import OpenVINORunner
    from compressdet.models import load_model
    from compressdet.quant._eval import evaluate_head_fn
    from compressdet.recipe import DataConfig, EvalConfig

    runner = OpenVINORunner(xml)
    fm, _ = load_model(float_model)
    mean = torch.tensor(MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1)

    def head(x):
        rgb = ((x + mean)[:, [2, 1, 0]] / 255.0).numpy()
        outs = [runner(rgb[i:i + 1]) for i in range(rgb.shape[0])]
        outs = [o[0] if isinstance(o, tuple) else o for o in outs]
        return (torch.from_numpy(np.concatenate(outs, 0)),)

    data_cfg = DataConfig(**data)
    res = evaluate_head_fn(head, data_cfg, split=split, model=DecodedYolo(fm.eval()),
                           eval_cfg=EvalConfig(batch_size=16), num_classes=fm.num_classes)
    out = {"map40": float(res["map40"]), "map11": float(res["map11"]), "images": res.get("images"), "split": split,
           "xml_sha256": spec["xml"], "kind": "ultralytics-openvino-int8"}
    atomic_write_json(path, out)
    return out


def student_onnx(model_file: Path, hw, folder: Path) -> Path:
    """The exact fp32 ONNX graph of a student model file (``_protocol.export_fast_fp32``), made once."""
    from _protocol import export_fast_fp32

    from compressdet._io import sha256_file
    from compressdet.models import load_model

    out = folder / f"{STUDENT}-{sha256_file(model_file)[:12]}-{hw[0]}x{hw[1]}.onnx"
    if not out.is_file():
        model, _ = load_model(model_file)
        export_fast_fp32(model.eval(), out, hw)
    return out


def ir_sha256(xml: Path) -> str:
    """One sha256 for an IR (its .xml and .bin)."""
    from compressdet._io import sha256_file

    return hashlib.sha256((sha256_file(xml) + sha256_file(xml.with_suffix(".bin"))).encode()).hexdigest()


def ig_portable(spec):
    from _protocol import _portable

    return _portable(spec, ROOT)


def pair_latency(jobs: dict, cache_dir: Path, p: dict, hw) -> dict:
    """``time_isolated`` of ``{name: (backend, file, sha256)}`` (each in processes of its own, alternating),
    cached by the files' sha256 and the settings (so a run restored from the ledger without its files is
    not re-timed): ``{"median_ms": {name: ms}, "cells": ...}``."""
    from compressdet._io import atomic_write_json
    from compressdet.bench.latency import TimingJob, time_isolated

    spec = {k: [b, sha] for k, (b, _f, sha) in sorted(jobs.items())} | {
        "runs": p["latency_runs"], "rounds": p["latency_rounds"], "threads": p["latency_threads"],
        "warmup": p["latency_warmup"], "hw": list(hw)}
    spec = {k: ([None, v[1]] if isinstance(v, list) else v) for k, v in spec.items()}  # the backend follows the file
    path = Path(cache_dir) / f"latency-{_digest(spec)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    missing = [f"{k}: {f}" for k, (b, f, _s) in jobs.items() if b is None or not Path(f).is_file()]
    if missing:
        raise SystemExit("not timed yet and not on this machine (re-make the run: drop its ledger entry): "
                         + "; ".join(missing))
    _budget.check("timing " + ", ".join(sorted(jobs)))
    cells = time_isolated({k: TimingJob(b, str(f), (1,), tuple(hw)) for k, (b, f, _s) in jobs.items()},
                          runs=p["latency_runs"], rounds=p["latency_rounds"], threads=p["latency_threads"],
                          warmup=p["latency_warmup"])
    out = {"median_ms": {k: cells[k]["b1"]["median_ms"] for k in jobs}, "cells": cells}
    atomic_write_json(path, out)
    return out


# ------------------------------------------------------------------------------------------ compressdet
def _schedule(steps: int, p: dict, lr: float | None = None) -> dict:
    every = max(steps // max(p["evals"], 1), 1)
    s = {"steps": steps, "batch_size": p["batch"], "eval_every": every, "checkpoint_every": every,
         "log_every": min(20, steps), "channels_last": p["channels_last"], "threads": p["threads"]}
    return s if lr is None else {**s, "lr": lr}


EVAL = {"batch_size": 16, "num_images_logged": 0}


def _named(prefix: str, recipe: dict, data_hash: str) -> dict:
    """The recipe named by a digest of itself (a model file by its sha256, not its path) and the data."""
    key = {**recipe, "stages": [{k: v for k, v in st.items() if not (st.get("kind") == "model_file" and k == "path")}
                                for st in recipe["stages"]]}
    return {**recipe, "name": f"{prefix}-{ig._digest({'recipe': key, 'data_hash': data_hash})}"}


def _file_stage(name: str, path: Path) -> dict:
    from compressdet._io import sha256_file

    return {"name": name, "kind": "model_file", "path": str(path), "sha256": sha256_file(path)}


def teacher_recipe(p: dict, steps: int, data_hash: str) -> dict:
    stage = {"name": "teacher", "kind": "train", "model": {"arch": TEACHER}, "schedule": _schedule(steps, p, p["teacher_lr"]),
             "eval": EVAL}
    return _named("yolo-teacher", {"seed": 0, "device": "cpu", "data": ig._data(p | {"student_augment": True}, False),
                                   "stages": [stage]}, data_hash)


def student_recipe(p: dict, steps: int, seed: int, method: str | None, teacher: Path, data_hash: str) -> dict:
    stages = [_file_stage("teacher", teacher)] if method else []
    st = {"name": "student", "kind": "train", "model": {"arch": STUDENT}, "schedule": _schedule(steps, p, p["lr"]),
          "eval": EVAL}
    if method:
        st |= {"teacher": "teacher", "distill": [{"method": method}]}
    return _named(f"yolo-{method or 'direct'}-s{seed}", {"seed": seed, "device": "cpu",
                                                         "data": ig._data(p | {"student_augment": False}, True),
                                                         "stages": stages + [st]}, data_hash)


def chain_recipe(p: dict, pl: dict, seed: int, method: str, teacher: Path, student: Path, data_hash: str) -> dict:
    distill = {"teacher": "teacher", "distill": [{"method": method}]}
    stages = [_file_stage("teacher", teacher), _file_stage("student", student),
              {"name": "pruned", "kind": "prune", "from": "student", "target": {"macs": p["prune_macs"]},
               "allocation": "uniform", "round_to": p["round_to"], "schedule": _schedule(pl["prune_steps"], p),
               "eval": EVAL, **distill},
              {"name": "int8", "kind": "qat", "from": "pruned", "schedule": _schedule(pl["qat_steps"], p),
               "quant": {"calibration_images": p["calibration_images"]}, "eval": EVAL, **distill},
              {"name": "deploy", "kind": "deploy", "from": "int8", "split": "test", "max_map_drop": p["max_map_drop"],
               "runs": p["latency_runs"], "rounds": p["latency_rounds"], "warmup": p["latency_warmup"],
               "threads": p["latency_threads"], "calibration_images": p["calibration_images"], "eval": EVAL}]
    return _named(f"yolo-chain-{method}-s{seed}", {"seed": seed, "device": "cpu",
                                                   "data": ig._data(p | {"student_augment": False}, True),
                                                   "stages": stages}, data_hash)


def deployed(work: Path, man: dict) -> dict:
    """The deploy stage's choice from the run's manifest: ``{"chosen", "precision", "map40" (test), "map_drop",
    "deploy_median_ms", "file", "sha256", "backend"}`` (``backend`` from its ``deploy.json`` when the run folder
    has it: a run restored from the ledger keeps only its record and model files)."""
    st = man["stages"]["deploy"]
    m, art = st["metrics"], st["artifacts"]["deployed"]
    folder = work / "runs" / man["recipe"]
    rep_path = folder / st["artifacts"]["report"]["path"]
    backend = None
    if rep_path.is_file():
        backend = json.loads(rep_path.read_text())["artifact"]["backend"]
    return {"chosen": m["chosen"], "precision": m.get("precision"), "map40": m["map"], "map_drop": m.get("map_drop"),
            "deploy_median_ms": m.get("latency_ms"), "file": folder / art["path"], "sha256": art["sha256"],
            "backend": backend}


# ------------------------------------------------------------------------------------------ report
def summarize(seeds: list[int], test: dict, latency: dict) -> dict:
    """The comparison blocks from every arm's per-seed test mAP40 (``test[arm][seed]``) and the deployed
    latencies (``latency[arm][seed]``, ms, ``chain`` and ``ultralytics_path``)."""
    from _protocol import claim

    def c(a, b):
        d = claim(test[a], test[b], seeds)
        return {k: d[k] for k in ("per_seed", "mean", "ci95", "significant")}

    ratio_per_seed = [latency["chain"][s] / latency["ultralytics_path"][s] for s in seeds]
    mean_c = statistics.mean(latency["chain"][s] for s in seeds)
    mean_u = statistics.mean(latency["ultralytics_path"][s] for s in seeds)
    cvu = {"map_diff": c("chain", "ultralytics_path"), "latency_ratio": mean_c / mean_u,
           "latency_ratio_per_seed": ratio_per_seed, "latency_ms_mean": {"chain": mean_c, "ultralytics_path": mean_u}}
    lo = cvu["map_diff"]["ci95"][0]
    goals = {"map_ahead_ci_above_0": bool(lo is not None and not math.isnan(lo) and lo > 0),
             "latency_equal_or_lower": bool(cvu["latency_ratio"] <= 1.0)}
    goals["met"] = goals["map_ahead_ci_above_0"] and goals["latency_equal_or_lower"]
    return {"chain_vs_ultralytics": cvu,
            "compressdet_distill_vs_ultralytics_distill": c("compressdet_distill", "ultralytics_distill"),
            "compressdet_distill_vs_direct": c("compressdet_distill", "direct"),
            "ultralytics_distill_vs_direct": c("ultralytics_distill", "direct"),
            "goals": goals}


def _cell(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})"


def _diff(d: dict) -> str:
    lo, hi = d["ci95"]
    ci = "n/a" if lo is None or math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"
    return f"{d['mean']:+.2f} {ci}" + ("" if d.get("significant") else ", not significant")


def render_md(r: dict) -> str:
    d, st, cvu = r["data"], r["steps"], r["chain_vs_ultralytics"]
    md = [f"# Ultralytics YOLO: compressdet's chain against Ultralytics' own ({r['preset']} preset)", "",
          f"`{r['command']}`; {r['cpu']}", "",
          f"SynthKITTI ({d['train_images']} train / {d['val_images']} val, every selection / {d['test_images']} test, "
          f"reported once), {d['image_size'][0]}x{d['image_size'][1]}; teacher {r['teacher']['arch']} "
          f"(test mAP40 {r['teacher']['test_map40']:.2f}), student {r['student']}; batch {st['batch']}, "
          f"{st['student_steps']} steps per student ({st['epochs']} Ultralytics epochs of {st['batches_per_epoch']}); "
          f"seeds {r['seeds']} (paired); test mAP40 (%) by compressdet's evaluation for every arm.", "",
          "| arm | what | test mAP40: mean (per seed) | ms: mean (per seed); deployed, or fp32 ORT |",
          "|---|---|---|---|"]
    for arm in ARMS:
        a = r["arms"][arm]
        lat = a.get("latency_ms")
        md.append(f"| {arm} | {a['what']} | {_cell(a['test_map40'])} | {_cell(lat) if lat else '-'} |")
    md += ["", f"- chain - Ultralytics' path (test mAP40, paired): {_diff(cvu['map_diff'])}",
           f"- deployed latency, compressdet / Ultralytics: {cvu['latency_ratio']:.2f}x (per seed "
           + ", ".join(f"{v:.2f}" for v in cvu["latency_ratio_per_seed"]) + ")",
           f"- compressdet distill - Ultralytics distill: {_diff(r['compressdet_distill_vs_ultralytics_distill'])}",
           f"- compressdet distill - direct: {_diff(r['compressdet_distill_vs_direct'])}",
           f"- Ultralytics distill - direct: {_diff(r['ultralytics_distill_vs_direct'])}",
           f"- method chosen on val (seed {r['seeds'][0]}): {r['selection']['chosen']} ("
           + ", ".join(f"{m} {v:.2f}" for m, v in r["selection"]["val_map40"].items()) + ")",
           f"- Ultralytics' distillation: {r['ultralytics']['settings']}",
           f"- goal ({GOAL}): {'met' if r['goals']['met'] else 'not met'} (mAP: {r['goals']['map_ahead_ci_above_0']}, "
           f"latency: {r['goals']['latency_equal_or_lower']})",
           f"- latency: {r['latency']['note']}"]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".yolo")
    ap.add_argument("--results", type=Path, help="where yolo.{json,md} go (default: benchmarks/results for cpu, "
                    "<work>/smoke/results for smoke)")
    ap.add_argument("--seeds", type=int, help="(checks only) number of paired seeds (default: the preset's 3)")
    ap.add_argument("--ledger", type=Path, help="committed record of finished runs (default: "
                    "benchmarks/ledger/yolo/<preset> for cpu, none for smoke)")
    ap.add_argument("--no-ledger", action="store_true", help="neither read nor write the ledger")
    args = ap.parse_args(argv)
    p = copy.deepcopy(PRESETS[args.preset])
    if args.seeds:
        p["seeds"] = list(range(args.seeds))

    import torch
    from _protocol import protocol_keys, test_map

    from compressdet._io import atomic_write_json, atomic_write_text, sha256_file
    from compressdet.data import build_dataset, prepare_data
    from compressdet.deploy.runner import _cpu
    from compressdet.models.yolo import _ultralytics, save_ultralytics
    from compressdet.recipe import DataConfig

    _ultralytics("benchmarks/yolo.py")  # fails in one line without Ultralytics; sets the offline environment
    import ultralytics

    t0 = time.perf_counter()
    torch.set_num_threads(p["threads"])
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.results or (RESULTS if args.preset != "smoke" else work / "results")
    ledger = ig.bench_ledger("yolo", args)
    test_dir = ledger.test_dir or work / "test_eval"
    seeds, s0 = p["seeds"], p["seeds"][0]
    hw = tuple(p["data"]["image_size"])
    data = ig._data(p | {"student_augment": False}, True)  # what every evaluation reads (no augmentation)
    s_cfg = DataConfig(**data)
    prepare_data(s_cfg)
    n = {split: len(build_dataset(s_cfg, split, train=False)) for split in ("train", "val", "test")}
    data_hash = ig.data_hash_of(s_cfg)
    pl = plan(p, n["train"])
    classes = list(s_cfg.classes)
    print(f"plan: {pl}; {n}", flush=True)
    data_yaml = yolo_dataset(s_cfg, work / f"yolo-data-{data_hash}")

    def run(recipe):
        print(f"run {recipe['name']}", flush=True)
        return ig._run(recipe, work, ledger)

    def tmap(path: Path) -> float:
        return test_map(path, data, test_dir)["map40"]

    # teacher (once, both sides)
    tman = run(teacher_recipe(p, pl["teacher_steps"], data_hash))
    teacher = ig.model_file(work, tman, "teacher", ledger)
    teacher_pt = work / "ultralytics" / f"teacher-{tman['recipe']}.pt"
    if not teacher_pt.is_file():
        teacher_pt.parent.mkdir(parents=True, exist_ok=True)
        save_ultralytics(teacher, teacher_pt, classes=classes)

    # compressdet students: direct; each method on seed s0, the val-best on every seed
    students: dict[str, dict[int, Path]] = {"direct": {}}
    val: dict[str, float] = {}
    for m in (None, *METHODS):
        man = run(student_recipe(p, pl["student_steps"], s0, m, teacher, data_hash))
        students.setdefault(m or "direct", {})[s0] = ig.model_file(work, man, "student", ledger)
        if m:
            val[m] = float(man["stages"]["student"]["metrics"]["map40"])
    chosen = max(METHODS, key=lambda m: (val[m], -METHODS.index(m)))
    for sd in seeds[1:]:
        for m in (None, chosen):
            man = run(student_recipe(p, pl["student_steps"], sd, m, teacher, data_hash))
            students[m or "direct"][sd] = ig.model_file(work, man, "student", ledger)

    # Ultralytics: its distillation (S steps), its path (S + P + Q steps) and its INT8 export
    ul_runs = {sd: ultralytics_train(work, data_yaml, teacher_pt, seed=sd, epochs=pl["epochs"], hw=hw, p=p)
               for sd in seeds}
    ul_path = {sd: ultralytics_train(work, data_yaml, teacher_pt, seed=sd, epochs=pl["path_epochs"], hw=hw, p=p)
               for sd in seeds}
    for sd in seeds:
        for r in (ul_runs[sd], ul_path[sd]):
            if not r["dis_loss"] or min(r["dis_loss"]) <= 0 or r["args"]["distill_model"] != str(teacher_pt):
                raise SystemExit(f"{r['folder']}: Ultralytics did not distil (dis_loss {r['dis_loss']})")
    ul_files = {sd: as_compressdet(ul_runs[sd]["best"], hw, classes, work / "models") for sd in seeds}
    ul_xml = {sd: ultralytics_export(ul_path[sd], data_yaml, hw, p) for sd in seeds}
    ul_path_files = {sd: as_compressdet(ul_path[sd]["best"], hw, classes, work / "models") for sd in seeds}

    # compressdet's chain from the chosen distilled student
    chain = {}
    for sd in seeds:
        man = run(chain_recipe(p, pl, sd, chosen, teacher, students[chosen][sd], data_hash))
        chain[sd] = {**deployed(work, man), "run": man["recipe"],
                     "prune": {k: man["stages"]["pruned"]["metrics"].get(k) for k in ("total_macs_ratio", "params_ratio")}}

    # latency: the two deployed files per seed, each in processes of its own, alternating
    # and the fp32 student (ORT, its exact fp32 graph): direct and both distilled arms share the architecture
    lat = {"chain": {}, "ultralytics_path": {}, "student_fp32": {}}
    lat_cells = {}
    for sd in seeds:
        onnx = student_onnx(students[chosen][sd], hw, work / "onnx")
        res = pair_latency({"chain": (chain[sd]["backend"], chain[sd]["file"], chain[sd]["sha256"]),
                            "ultralytics_path": ("openvino-int8", ul_xml[sd], ir_sha256(ul_xml[sd])),
                            "student_fp32": ("ort", onnx, sha256_file(onnx))}, test_dir, p, hw)
        lat_cells[sd] = res["cells"]
        for k in lat:
            lat[k][sd] = res["median_ms"][k]

    test = {"direct": {sd: tmap(students["direct"][sd]) for sd in seeds},
            "compressdet_distill": {sd: tmap(students[chosen][sd]) for sd in seeds},
            "ultralytics_distill": {sd: tmap(ul_files[sd]) for sd in seeds},
            "chain": {sd: chain[sd]["map40"] for sd in seeds},
            "ultralytics_path": {sd: ir_test_map(ul_xml[sd], ul_path_files[sd], data, test_dir)["map40"] for sd in seeds}}
    ul_fp32 = {sd: tmap(ul_path_files[sd]) for sd in seeds}
    what = {"direct": f"{STUDENT} by compressdet, no distillation",
            "compressdet_distill": f"{STUDENT} distilled by compressdet ({chosen}, chosen on val)",
            "ultralytics_distill": f"{STUDENT} distilled by Ultralytics (distill_model, dis {ul_runs[s0]['args']['dis']})",
            "chain": f"compressdet: {chosen} distill + prune (MACs {p['prune_macs']}) + QAT, deploy's choice",
            "ultralytics_path": "Ultralytics: distill + export format=openvino int8=True (NNCF)"}
    arms = {a: {"what": what[a], "test_map40": [test[a][sd] for sd in seeds]} for a in ARMS}
    arms["chain"] |= {"latency_ms": [lat["chain"][sd] for sd in seeds], "steps": pl["chain_steps"],
                      "deployed": [{k: v for k, v in chain[sd].items() if k != "file"} | {
                          "file": ig.rel_to_root(Path(chain[sd]["file"]))} for sd in seeds]}
    arms["ultralytics_path"] |= {"latency_ms": [lat["ultralytics_path"][sd] for sd in seeds], "steps": pl["path_steps"],
                                 "fp32_test_map40": [ul_fp32[sd] for sd in seeds],
                                 "files": [ig.rel_to_root(ul_xml[sd]) for sd in seeds],
                                 "dis_loss": [ul_path[sd]["dis_loss"] for sd in seeds]}
    arms["ultralytics_distill"] |= {"steps": pl["student_steps"], "dis_loss": [ul_runs[sd]["dis_loss"] for sd in seeds],
                                    "distilled": all(min(ul_runs[sd]["dis_loss"]) > 0 for sd in seeds),
                                    "files": [ig.rel_to_root(ul_runs[sd]["best"]) for sd in seeds]}
    for a in ("direct", "compressdet_distill"):
        arms[a]["steps"] = pl["student_steps"]
    for a in ("direct", "compressdet_distill", "ultralytics_distill"):
        arms[a]["latency_ms"] = [lat["student_fp32"][sd] for sd in seeds]
        arms[a]["latency_of"] = (f"the fp32 {STUDENT} (ORT, exact fp32 graph of the compressdet_distill student of "
                                 "the seed; the three arms share the architecture)")
    summary = summarize(seeds, test, lat)
    ul_settings = {**ul_runs[s0]["args"], "distill_model": ig.rel_to_root(Path(ul_runs[s0]["args"]["distill_model"]))}
    if ledger.root is not None:  # provenance of the Ultralytics runs (the bytes stay in the work folder)
        atomic_write_json(ledger.root / "ultralytics.json", {
            str(sd): {"distill": {"best_sha256": ul_runs[sd]["best_sha256"], "folder": ig.rel_to_root(ul_runs[sd]["folder"])},
                      "path": {"best_sha256": ul_path[sd]["best_sha256"], "folder": ig.rel_to_root(ul_path[sd]["folder"])}}
            for sd in seeds})
    result = {
        "preset": args.preset, **protocol_keys(seeds),
        "command": f"python benchmarks/yolo.py --preset {args.preset}" + (f" --seeds {args.seeds}" if args.seeds else ""),
        "cpu": _cpu(), "versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__},
        "map_metric": "official KITTI AP40, mAP over car/pedestrian/cyclist x E/M/H (%), compressdet's evaluation",
        "data": {"train_images": n["train"], "val_images": n["val"], "test_images": n["test"], "data_hash": data_hash,
                 "image_size": list(hw), "synth": p["data"].get("synth"), "yolo_yaml": "the same images, YOLO format"},
        "steps": {**pl, "batch": p["batch"]},
        "teacher": {"arch": TEACHER, "run": tman["recipe"], "steps": pl["teacher_steps"], "lr": p["teacher_lr"],
                    "val_map40": tman["stages"]["teacher"]["metrics"].get("map40"), "test_map40": tmap(teacher)},
        "student": STUDENT,
        "selection": {"split": "val", "seed": s0, "val_map40": val, "chosen": chosen,
                      "note": "each method at its default weight; ties go to the first listed"},
        "ultralytics": {"settings": ul_settings, "export": {"format": "openvino", "int8": True, "imgsz": list(hw),
                                                           "batch": 1, "calibration": "NNCF on the YAML's val split"},
                        "note": "default.yaml for every other argument; torch threads pinned to the preset's"},
        "arms": arms, **summary,
        "latency": {"timer": "isolated_process", "runs": p["latency_runs"], "rounds": p["latency_rounds"],
                    "threads": p["latency_threads"], "warmup": p["latency_warmup"], "batch": 1, "image_size": list(hw),
                    "cells": {str(sd): lat_cells[sd] for sd in seeds},
                    "note": (f"batch 1 at {hw[0]}x{hw[1]}, median of {p['latency_runs']} runs over "
                             f"{p['latency_rounds']} round(s), {p['latency_threads']} thread(s), compressdet's deployed "
                             "file, Ultralytics' INT8 IR and the fp32 student (ORT) each in processes of their own, "
                             "alternating; Ultralytics' graph includes its box decode, compressdet's graphs end at the "
                             "raw outputs")},
        "goal": GOAL,
        "minutes_this_invocation": (time.perf_counter() - t0) / 60,
        "ledger": ({"path": ig.rel_to_root(ledger.root), "runs": ledger.entries()} if ledger.root else None),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "yolo.json", result)
    md = render_md(result)
    atomic_write_text(out_dir / "yolo.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        _child(json.loads(Path(sys.argv[2]).read_text()))
        sys.exit(0)
    sys.exit(main())
