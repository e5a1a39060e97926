"""Does fine-grained feature imitation help the 0.25x student? (METHOD.md section 3)

Runs, through the recipe pipeline, on SynthKITTI rendered from the real KITTI layouts:

1. a 1x teacher, trained once and cached (run folder keyed by its recipe + the synth data hash;
   re-runs resume/skip it); its wall time is reported as ``teacher_minutes``;
2. a weight sweep of the imitating 0.25x student on the first seed; the best weight (val mAP40) is
   then used for every seed;
3. per seed, three 0.25x students that share initialisation and batch order: without imitation,
   with imitation from the teacher, and with imitation from an untrained, frozen 1x (the control
   that separates knowledge transfer from mere regularisation). Teachers enter the student recipes
   through the ``model_file`` stage kind (the cached teacher file, pinned by sha256).

Writes benchmarks/results/imitation_gain.{json,md}.

    python benchmarks/imitation_gain.py --preset smoke   # < 3 min on CPU, checks the plumbing only
    python benchmarks/imitation_gain.py --preset cpu     # the issue's budget on a 2-core CPU
    python benchmarks/imitation_gain.py --preset cpu --teacher-minutes 60 --student-minutes 90
    python benchmarks/imitation_gain.py --preset gpu     # the seed's schedule (384x1248, 40k steps)
    python benchmarks/imitation_gain.py --preset smoke --input-overhead-only   # ~1 min on CPU

``cpu`` preset: 7,481 synth images at KITTI's 1242x375 (layouts drawn from all 7,481 real label
files, cyclist layouts 4x as often), MSCNN-sized split (3,712 train / 3,769 val), model input
192x624 (a KITTI "moderate" object, >= 25 px tall at 375 px, is >= 12.8 px at 192 px: enough for
the stride-16 grid and its smallest 37 px anchor), batch 2, 2 threads, channels_last, val mAP
on the first 1,000 val images. Batch 2, not the seed's 32: at a fixed CPU budget the number of
updates is what limits these short runs, and img/s hardly depends on the batch. Measured (0.25x,
seed lr 0.02 cosine, clip 1.0, 2,400 images = 4 min each, val mAP40 on 1,000 images): batch 16 x
150 steps 0.00, batch 8 x 300 0.34, batch 4 x 600 3.26, batch 2 x 1,200 6.25 (10.6-11.7 img/s).
Dropping the clip diverges (NaN at step 10); clip 10 + lr 0.05 + 10 warm-up steps at batch 16 did
not help (0.00). Steps come from the budgets: a few steps of every kind of run are
timed first and the steps set so the teacher fits ``--teacher-minutes`` and all student runs
together ``--student-minutes`` (the plan is stored, so a re-run reuses the same steps and the cached
teacher). Students train without augmentation in this preset (about 1.5 epochs each, where
augmentation matters little) so that the teacher sees the same input every time an image comes
back, which makes the teacher-feature cache below hit.

Teacher-feature cache (``cpu``/``smoke``; benchmark-only): teacher maps are stored per input
image keyed by a hash of the exact input tensor bytes, so a stored map is only ever reused for a
bit-identical input (frozen teacher in eval mode: its output depends on nothing else). It is
installed by wrapping ``compressdet.engine.launch.load_teacher`` inside this process only; the
engine is unchanged. ``feature_cache.max_abs_diff`` records a check against a live forward (batched
convolution rounding only).

``input_overhead``: how much slower a real training step (data loader: read, transform, collate)
is than the same step fed a fixed random batch of the same shape, measured by
:func:`measure_input_overhead` (steps interleaved so drift hits both sides alike); reported for
the plain student step (the cheapest step, so the largest fraction) and, in the detail, for a
step with live-teacher imitation.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LAYOUTS = ROOT.parent / "shared" / "kitti_real" / "training" / "label_2_all"
MSCNN_TRAIN, MSCNN_VAL = 3712, 3769  # METHOD.md section 7

_SYNTH_KITTI = {"num_images": MSCNN_TRAIN + MSCNN_VAL, "size": [1242, 375], "seed": 0, "layouts": str(LAYOUTS),
                "val_fraction": MSCNN_VAL / (MSCNN_TRAIN + MSCNN_VAL), "oversample": {"Cyclist": 4.0}}

# teacher_evals/student_evals: val evaluations per run (best checkpoint = best of them).
# steps None: derived from --teacher-minutes/--student-minutes by measure_speeds + plan_steps.
PRESETS = {
    "smoke": {"data": {"format": "synth", "image_size": [64, 192], "synth": {"num_images": 16, "size": [384, 128]},
                       "max_val_images": 4, "cache": True},
              "teacher_steps": 4, "student_steps": 3, "batch": 2, "seeds": [0, 1, 2], "sweep": [0.25, 0.5, 1.0],
              "device": "cpu", "threads": 1, "channels_last": True, "feature_cache": True, "student_augment": False,
              "eval_images": None, "teacher_evals": 2, "student_evals": 1},
    "cpu": {"data": {"format": "synth", "image_size": [192, 624], "synth": _SYNTH_KITTI, "cache": True},
            "teacher_steps": None, "student_steps": None, "batch": 2, "seeds": [0, 1, 2],
            "sweep": [0.25, 0.5, 1.0], "device": "cpu", "threads": 2, "channels_last": True, "feature_cache": True,
            "student_augment": False, "eval_images": 1000, "teacher_evals": 4, "student_evals": 2},
    "gpu": {"data": {"format": "synth", "image_size": [384, 1248], "synth": _SYNTH_KITTI, "cache": True,
                     "num_workers": 4},
            "teacher_steps": 40000, "student_steps": 40000, "batch": 32, "seeds": [0, 1, 2],
            "sweep": [0.25, 0.5, 1.0], "device": "auto", "threads": None, "channels_last": False,
            "feature_cache": False, "student_augment": True, "eval_images": None, "teacher_evals": 80,
            "student_evals": 80},
}
RANDOM_TEACHER_SEED = 12345


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _data(p: dict, student: bool) -> dict:
    d = copy.deepcopy(p["data"])
    if student and not p["student_augment"]:
        d["augment"] = {"enabled": False}
    return d


def _stage(name, arch, steps, p, n_evals, **extra):
    every = max(steps // max(n_evals, 1), 1)
    sched = {"steps": steps, "batch_size": p["batch"], "eval_every": every, "checkpoint_every": every,
             "log_every": min(20, steps), "channels_last": p["channels_last"]}
    if p["threads"]:
        sched["threads"] = p["threads"]
    ev = {"batch_size": 16, "num_images_logged": 0}
    if p["eval_images"]:
        ev["max_images"] = p["eval_images"]
    return {"name": name, "kind": "train", "model": {"arch": arch}, "schedule": sched, "eval": ev, **extra}


def _run(recipe: dict, work: Path) -> dict:
    """Run a recipe dict with the CLI (resuming its run folder if one exists); returns the manifest."""
    from compressdet.cli import main

    path = work / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = work / "runs" / recipe["name"]
    args = ["run", str(path), "--run-dir", str(run_dir)]
    if (run_dir / "manifest.json").exists():
        args.append("--resume")
    rc = main(args)
    if rc != 0:
        raise SystemExit(f"recipe {recipe['name']} failed (exit {rc})")
    return json.loads((run_dir / "manifest.json").read_text())


# --------------------------------------------------------------------------------------------
# Teacher-feature cache (exact: keyed by the input's bytes)
# --------------------------------------------------------------------------------------------
class FeatureStore:
    """Teacher maps of up to ``capacity`` distinct inputs in a float32 memmap under ``folder``."""

    def __init__(self, folder: Path, name: str, capacity: int):
        self.path, self.capacity = folder / f"{name}.f32", capacity
        self.index: dict[bytes, int] = {}
        self.mm = None
        self.hits = self.misses = 0

    def get(self, key: bytes):
        import numpy as np

        slot = self.index.get(key)
        if slot is None:
            self.misses += 1
            return None
        self.hits += 1
        return np.array(self.mm[slot])

    def put(self, key: bytes, feat) -> None:
        import numpy as np

        if self.mm is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                                shape=(self.capacity, *feat.shape))
        if len(self.index) < self.capacity and key not in self.index:
            self.mm[len(self.index)] = feat
            self.index[key] = len(self.index)

    def close(self) -> None:
        self.mm = None
        self.path.unlink(missing_ok=True)


def _cached_teacher_cls():
    import numpy as np
    import torch
    from torch import nn

    class CachedTeacher(nn.Module):
        """``forward_with_features`` of a frozen teacher, served from a FeatureStore when the exact
        same input image was seen before (teacher in eval mode: per-image output, no state)."""

        def __init__(self, teacher: nn.Module, store: FeatureStore):
            super().__init__()
            self.teacher, self.store = teacher, store
            self.feature_channels = teacher.feature_channels

        @torch.no_grad()
        def forward_with_features(self, x):
            keys = [hashlib.blake2b(xi.contiguous().cpu().numpy().tobytes(), digest_size=16).digest() for xi in x]
            feats = [self.store.get(k) for k in keys]
            miss = [i for i, f in enumerate(feats) if f is None]
            if miss:
                _, f = self.teacher.forward_with_features(x[miss])
                f = f.float().cpu().contiguous().numpy()
                for j, i in enumerate(miss):
                    self.store.put(keys[i], f[j])
                    feats[i] = f[j]
            return None, torch.from_numpy(np.stack(feats)).to(x.device)

    return CachedTeacher


@contextlib.contextmanager
def teacher_feature_cache(folder: Path, capacity: int, enabled: bool = True):
    """Within the block, stages that load a teacher get it wrapped in a CachedTeacher (one store per
    teacher file, by sha256). Yields the dict of stores (for hit/miss counts); removes them after."""
    stores: dict[str, FeatureStore] = {}
    if not enabled:
        yield stores
        return
    from compressdet._io import sha256_file
    from compressdet.engine import launch

    original = launch.load_teacher
    CachedTeacher = _cached_teacher_cls()

    def load(path, device):
        digest = sha256_file(path)[:16]
        store = stores.setdefault(digest, FeatureStore(folder, digest, capacity))
        return CachedTeacher(original(path, device), store)

    launch.load_teacher = load
    try:
        yield stores
    finally:
        launch.load_teacher = original
        for s in stores.values():
            s.close()


def check_feature_cache(teacher, images) -> float:
    """Max |cached - live| teacher feature for half a batch served from a cache filled by the whole
    batch (differences only from batched-convolution rounding)."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp), "check", len(images))
        wrapped = _cached_teacher_cls()(teacher.eval(), store)
        wrapped.forward_with_features(images)
        half = images[: max(len(images) // 2, 1)]
        _, cached = wrapped.forward_with_features(half)
        with torch.no_grad():
            _, live = teacher.forward_with_features(half)
        assert store.hits == len(half), "cache did not hit on identical inputs"
        store.close()
    return float((cached - live.float()).abs().max())


# --------------------------------------------------------------------------------------------
# Throughput -> steps
# --------------------------------------------------------------------------------------------
def _trainer(p, model, data_cfg, loader, teacher=None, weight=0.0, tmp="."):
    from compressdet.engine import Trainer
    from compressdet.losses import SqueezeDetLoss
    from compressdet.recipe import ImitationConfig, ScheduleConfig

    hw = tuple(data_cfg.image_size)
    sched = ScheduleConfig(steps=10 ** 9, batch_size=p["batch"], log_every=10 ** 9, eval_every=10 ** 9,
                           checkpoint_every=10 ** 9, channels_last=p["channels_last"], threads=p["threads"])
    device = "cuda" if p["device"] == "auto" and _cuda() else "cpu"
    return Trainer(model, schedule=sched, loss_fn=SqueezeDetLoss(model.anchors(), image_size=hw),
                   train_loader=loader, teacher=teacher,
                   imitation=ImitationConfig(weight=weight) if weight else None,
                   out_dir=tmp, device=device, seed=0)


def _flops_params(hw) -> tuple[dict, dict]:
    """The seed table's FLOPs and params cells per model at the benchmark's input (params to 4 digits,
    as METHOD.md gives the 0.25x's 0.2095 M)."""
    from compressdet.eval.table import size_cells
    from compressdet.models import build_model
    from compressdet.models.summary import model_summary

    cells = {key: size_cells(model_summary(build_model(arch, image_size=hw)), params_digits=4)
             for key, arch in (("1x", "shuffledet_1x"), ("0.25x", "shuffledet_0.25x"))}
    return {k: c[0] for k, c in cells.items()}, {k: c[1] for k, c in cells.items()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _median_time(fn, n: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure_speeds(p: dict, *, steps: int = 3) -> dict:
    """Seconds per step of each kind of run (fixed real batch; input time measured on its own),
    teacher forward and eval forward seconds per image, and the feature-cache exactness check."""
    import tempfile

    import torch

    from compressdet.data import build_dataset, build_loader
    from compressdet.models import build_model
    from compressdet.recipe import DataConfig

    if p["threads"]:
        torch.set_num_threads(p["threads"])
    t_cfg, s_cfg = DataConfig(**_data(p, False)), DataConfig(**_data(p, True))
    hw = tuple(s_cfg.image_size)
    out: dict = {}
    loaders = {}
    for kind, cfg in (("teacher", t_cfg), ("student", s_cfg)):
        loaders[kind] = build_loader(build_dataset(cfg, "train", train=True, seed=0), batch_size=p["batch"],
                                     train=True, seed=0, num_workers=cfg.num_workers)
        it = iter(loaders[kind])
        out[f"input_s_{kind}"] = _median_time(lambda it=it: next(it), steps + 1)
    batch = next(iter(loaders["student"]))
    images = batch[0].contiguous(memory_format=torch.channels_last) if p["channels_last"] else batch[0]
    torch.manual_seed(0)
    teacher = build_model("shuffledet_1x", image_size=hw).eval()
    student = build_model("shuffledet_0.25x", image_size=hw)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        if p["channels_last"]:
            teacher.to(memory_format=torch.channels_last)
        out["teacher_fwd_s_per_img"] = _median_time(lambda: teacher.forward_with_features(images), 2) / len(images)
        out["eval_s_per_img_1x"] = out["teacher_fwd_s_per_img"]
        student.eval()
        out["eval_s_per_img_0.25x"] = _median_time(lambda: student(images), 2) / len(images)
        out["feature_cache_max_abs_diff"] = check_feature_cache(teacher, images)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"teacher_step_s": (build_model("shuffledet_1x", image_size=hw), None, 0.0),
                "student_step_s": (student.train(), None, 0.0)}
        store = FeatureStore(Path(tmp), "speed", len(images))
        if p["feature_cache"]:
            runs["imitation_step_s"] = (build_model("shuffledet_0.25x", image_size=hw),
                                        _cached_teacher_cls()(teacher, store), 1.0)  # hits after warm-up
        else:
            runs["imitation_step_s"] = (build_model("shuffledet_0.25x", image_size=hw), teacher, 1.0)
        for key, (model, tch, w) in runs.items():
            tr = _trainer(p, model, s_cfg, loaders["student"], teacher=tch, weight=w, tmp=tmp)
            tr._data_iter = itertools.repeat(batch)
            out[key] = _median_time(tr.run_step, steps)
        store.close()
    return out


def plan_steps(p: dict, speeds: dict, *, teacher_minutes: float, student_minutes: float, n_train: int,
               n_eval: int, margin: float = 0.9, per_run_s: float = 15.0) -> dict:
    """Steps so the teacher fits ``teacher_minutes`` and all student runs ``student_minutes``.

    Student cost = steps x (per-step time of every run, input included) + evaluations + a fixed
    per-run overhead + filling the feature caches (one teacher forward per distinct train image,
    for the trained and the random teacher). ``margin`` keeps a reserve for the shared CPU.
    """
    B = p["batch"]
    t_eval = 1.25 * n_eval * speeds["eval_s_per_img_1x"] + 5.0
    t_budget = teacher_minutes * 60 * margin - p["teacher_evals"] * t_eval - per_run_s
    teacher_steps = max(int(t_budget / (speeds["teacher_step_s"] + speeds["input_s_teacher"])), 2)
    n_seeds = len(p["seeds"])
    n_base, n_imit = n_seeds, len(p["sweep"]) + (n_seeds - 1) + n_seeds
    n_runs = n_base + n_imit
    step_imit = speeds["imitation_step_s"] + speeds["input_s_student"]
    t_img = speeds["teacher_fwd_s_per_img"]
    per_step = n_base * (speeds["student_step_s"] + speeds["input_s_student"]) + n_imit * step_imit
    fixed = n_runs * (p["student_evals"] * (1.25 * n_eval * speeds["eval_s_per_img_0.25x"] + 5.0) + per_run_s)
    s_budget = student_minutes * 60 * margin - fixed
    if p["feature_cache"]:  # 2 teachers x one forward per distinct image (at most the train set)
        steps = s_budget / (per_step + 2 * B * t_img)
        if steps * B > n_train:
            steps = (s_budget - 2 * n_train * t_img) / per_step
    else:
        steps = s_budget / (per_step + n_imit * B * t_img)
    student_steps = max(int(steps), 2)
    est = {"teacher_s": teacher_steps * (speeds["teacher_step_s"] + speeds["input_s_teacher"])
           + p["teacher_evals"] * t_eval + per_run_s,
           "students_s": student_steps * per_step + fixed
           + (2 * min(student_steps * B, n_train) * t_img if p["feature_cache"]
              else n_imit * student_steps * B * t_img)}
    return {"teacher_steps": teacher_steps, "student_steps": student_steps, "runs": n_runs,
            "estimated_minutes": {k: v / 60 for k, v in est.items()},
            "budget_too_small": t_budget <= 0 or s_budget <= 0}


def measure_input_overhead(p: dict, *, steps: int = 8, chunk: int = 2, warmup: int = 2, seed: int = 0,
                           imitation: bool = False) -> dict:
    """Fraction by which a real training step exceeds one on random tensors of the same shape.

    One Trainer (0.25x student; with ``imitation`` a live random 1x teacher, weight 1), the
    preset's student data, batch, threads and memory format; its step reads either the real loader
    or a fixed random batch (same image shape, the real batch's targets), alternating every
    ``chunk`` steps after ``warmup`` steps of each. Everything but the input (forward, loss,
    imitation, backward, optimizer) is the same code.

    Returns:
        ``{"input_overhead": (t_real - t_random) / t_random, "real_s_per_step", "random_s_per_step",
        "steps", "imitation"}`` (median seconds per step of each kind).
    """
    import tempfile

    import torch

    from compressdet.data import build_dataset, build_loader
    from compressdet.models import build_model
    from compressdet.recipe import DataConfig

    if p["threads"]:
        torch.set_num_threads(p["threads"])
    data_cfg = DataConfig(**_data(p, True))
    hw = tuple(data_cfg.image_size)
    loader = build_loader(build_dataset(data_cfg, "train", train=True, seed=seed), batch_size=p["batch"],
                          train=True, seed=seed, num_workers=data_cfg.num_workers)
    torch.manual_seed(seed)
    student = build_model("shuffledet_0.25x", image_size=hw)
    teacher = build_model("shuffledet_1x", image_size=hw).eval() if imitation else None
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(p, student, data_cfg, loader, teacher=teacher, weight=1.0 if imitation else 0.0, tmp=tmp)
        device = tr.device.type
        real_iter = iter(loader)
        images, targets = next(real_iter)
        fixed = itertools.repeat((torch.randn_like(images) * 50, targets))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def timed(it, n: int) -> list[float]:
            tr._data_iter = it
            out = []
            for _ in range(n):
                sync()
                t0 = time.perf_counter()
                tr.run_step()
                sync()
                out.append(time.perf_counter() - t0)
                tr.iter += 1
            return out

        timed(real_iter, warmup), timed(fixed, warmup)
        real, rand = [], []
        for _ in range(max(steps // chunk, 1)):
            real += timed(real_iter, chunk)
            rand += timed(fixed, chunk)
    t_real, t_rand = statistics.median(real), statistics.median(rand)
    return {"input_overhead": (t_real - t_rand) / t_rand, "real_s_per_step": t_real, "random_s_per_step": t_rand,
            "steps": len(real), "imitation": imitation}


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------
def _preset(args) -> dict:
    p = copy.deepcopy(PRESETS[args.preset])
    if args.synth_images:  # check runs only: a smaller set, same split fractions
        p["data"]["synth"] = {**p["data"]["synth"], "num_images": args.synth_images}
    if args.eval_images:
        p["eval_images"] = args.eval_images
    if args.seeds:
        p["seeds"] = list(range(args.seeds))
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".imitation_gain")
    ap.add_argument("--teacher-minutes", type=float, default=60.0, help="teacher budget (presets without fixed steps)")
    ap.add_argument("--student-minutes", type=float, default=90.0, help="budget for all student runs together")
    ap.add_argument("--input-overhead-only", action="store_true",
                    help="only measure input_overhead (updates it in an existing results JSON)")
    ap.add_argument("--overhead-steps", type=int, default=8, help="timed steps of each kind")
    ap.add_argument("--synth-images", type=int, help="(checks only) generate fewer synth images")
    ap.add_argument("--eval-images", type=int, help="(checks only) evaluate on fewer val images")
    ap.add_argument("--seeds", type=int, help="(checks only) number of paired seeds (default 3)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where imitation_gain.{json,md} go")
    ap.add_argument("--teacher-only", action="store_true",
                    help="train (or find) the cached teacher and stop; says whether it matches the results JSON's "
                         "teacher (what prune.py/quant.py --preset cpu reuse)")
    args = ap.parse_args(argv)
    p = _preset(args)
    out_dir = args.results
    if args.input_overhead_only:
        ov = measure_input_overhead(p, steps=args.overhead_steps)
        ov_imit = measure_input_overhead(p, steps=args.overhead_steps, imitation=True)
        out = out_dir / "imitation_gain.json"
        if out.is_file():
            old = json.loads(out.read_text())
            old.update(input_overhead=ov["input_overhead"],
                       input_overhead_detail={**ov, "with_imitation": ov_imit, "preset": args.preset})
            out.write_text(json.dumps(old, indent=2) + "\n")
        print(json.dumps({**ov, "with_imitation": ov_imit}, indent=2))
        return 0
    import torch

    from compressdet._io import sha256_file
    from compressdet.data import build_dataset, prepare_data
    from compressdet.data.synth import synth_key
    from compressdet.eval import format_table
    from compressdet.eval.table import result_from_ap40
    from compressdet.models import build_model, save_model
    from compressdet.recipe import DataConfig

    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    hw = tuple(p["data"]["image_size"])

    # 0. data: generate/cache once (not part of either training budget)
    t0 = time.perf_counter()
    s_cfg = DataConfig(**_data(p, True))
    prepare_data(s_cfg)
    n_train = len(build_dataset(s_cfg, "train", train=True))
    n_val = len(build_dataset(s_cfg, "val", train=False))
    data_hash = synth_key(s_cfg.synth) if s_cfg.format == "synth" else _digest(s_cfg.model_dump(mode="json"))
    data_minutes = (time.perf_counter() - t0) / 60
    n_eval = min(p["eval_images"] or n_val, n_val)

    # 1. steps: fixed by the preset, or planned from measured throughput (stored, so re-runs agree)
    plan_key = _digest({"p": p, "data": data_hash, "tm": args.teacher_minutes, "sm": args.student_minutes})
    plan_path = work / f"plan-{plan_key}.json"
    measure_minutes = 0.0
    if p["teacher_steps"] is not None:
        plan = {"teacher_steps": p["teacher_steps"], "student_steps": p["student_steps"], "source": "preset"}
    elif plan_path.is_file():
        plan = json.loads(plan_path.read_text())
    else:
        t0 = time.perf_counter()
        speeds = measure_speeds(p)
        measure_minutes = (time.perf_counter() - t0) / 60
        plan = {**plan_steps(p, speeds, teacher_minutes=args.teacher_minutes, student_minutes=args.student_minutes,
                             n_train=n_train, n_eval=n_eval),
                "speeds": speeds, "measure_minutes": measure_minutes, "source": "measured",
                "teacher_minutes_budget": args.teacher_minutes, "student_minutes_budget": args.student_minutes}
        plan_path.write_text(json.dumps(plan, indent=2) + "\n")
        if plan["budget_too_small"]:
            print("warning: budget below the fixed costs (evaluation, set-up); using the minimum of 2 steps")
    print(f"plan: teacher {plan['teacher_steps']} steps, each student {plan['student_steps']} steps "
          f"(batch {p['batch']}, {n_train} train / {n_val} val images, eval on {n_eval})")

    # 2. teacher, cached by its recipe + the data hash
    base = {"seed": 0, "device": p["device"]}
    teacher_recipe = {**base, "data": _data(p, False),
                      "stages": [_stage("teacher", "shuffledet_1x", plan["teacher_steps"], p, p["teacher_evals"])]}
    key = _digest({"recipe": teacher_recipe, "data_hash": data_hash})
    teacher_recipe["name"] = f"teacher-{key}"
    t0 = time.perf_counter()
    tman = _run(teacher_recipe, work)
    trec = tman["stages"]["teacher"]
    # the stage's own wall time, as recorded when it ran (also when this run reused the cached teacher)
    teacher_minutes = trec.get("wall_time_s", time.perf_counter() - t0) / 60
    teacher_file = (work / "runs" / teacher_recipe["name"] / trec["artifacts"]["model"]["path"]).resolve()
    if args.teacher_only:
        recorded = out_dir / "imitation_gain.json"
        want = json.loads(recorded.read_text())["teacher"]["sha256"] if recorded.is_file() else None
        got = sha256_file(teacher_file)
        print(f"teacher {teacher_file} sha256 {got[:12]}, mAP40 {trec['metrics'].get('map40')}, "
              f"{teacher_minutes:.1f} min: " + ("matches" if got == want else f"differs from {recorded} ({str(want)[:12]})"))
        return 0 if got == want else 1

    # the control: an untrained 1x, frozen like the teacher (fixed init, independent of the seeds)
    random_file = work / f"random_1x_{hw[0]}x{hw[1]}_seed{RANDOM_TEACHER_SEED}.pt"
    if not random_file.is_file():
        torch.manual_seed(RANDOM_TEACHER_SEED)
        save_model(build_model("shuffledet_1x", image_size=hw), random_file,
                   meta={"untrained": True, "init_seed": RANDOM_TEACHER_SEED})

    skey = _digest({"teacher": key, "steps": plan["student_steps"], "p": p})

    def student(label: str, seed: int, weight: float, teacher: Path | None) -> dict:
        st = _stage("student", "shuffledet_0.25x", plan["student_steps"], p, p["student_evals"])
        stages = []
        if teacher is not None:
            stages.append({"name": "teacher", "kind": "model_file", "path": str(teacher),
                           "sha256": sha256_file(teacher)})
            st.update(teacher="teacher", imitation={"weight": weight})
        stages.append(st)
        return {**base, "seed": seed, "name": f"{label}-s{seed}-{skey}", "data": _data(p, True), "stages": stages}

    student_s: list[float] = []  # each student stage's own wall time (also for runs a re-run skips)
    models: dict[str, str] = {}  # run name -> the student's model file (reused by prune.py/quant.py cpu)

    def metrics(man: dict) -> dict:
        student_s.append(sum(r.get("wall_time_s", 0.0) for r in man["stages"].values()))
        art = man["stages"]["student"]["artifacts"]["model"]
        models[man["recipe"]] = str((work / "runs" / man["recipe"] / art["path"]).resolve())
        return man["stages"]["student"]["metrics"]

    rows: dict[str, list] = {"0.25x": [], "0.25x-I": [], "0.25x-I-random": []}
    seed_metrics: dict[str, dict] = {}
    img_s: list[float] = []
    s0 = p["seeds"][0]
    t0 = time.perf_counter()
    with teacher_feature_cache(work / "feature_cache", n_train, enabled=p["feature_cache"]) as stores:
        # 3. the weight sweep on the first seed comes first; its best weight is used for every seed
        sweep = {}
        for w in p["sweep"]:
            m = metrics(_run(student(f"I-w{w}", s0, w, teacher_file), work))
            sweep[str(w)] = m["map40"]
            seed_metrics[f"w{w}"] = m
            img_s.append(m["train_img_per_s"])
        best_w = max(p["sweep"], key=lambda w: (sweep[str(w)], -w))
        # 4. paired seeds: baseline, imitation (best weight), imitation from the random 1x
        for seed in p["seeds"]:
            for label, run_label, weight, tf in (("0.25x", "base", 0.0, None),
                                                 ("0.25x-I", f"I-w{best_w}", best_w, teacher_file),
                                                 ("0.25x-I-random", f"Irand-w{best_w}", best_w, random_file)):
                if label == "0.25x-I" and seed == s0:
                    m = seed_metrics[f"w{best_w}"]  # the sweep already ran it (same recipe)
                else:
                    m = metrics(_run(student(run_label, seed, weight, tf), work))
                    img_s.append(m["train_img_per_s"])
                rows[label].append(m["map40"])
                if seed == s0:
                    seed_metrics[label] = m
        cache_stats = {k: {"hits": s.hits, "misses": s.misses, "stored": len(s.index)} for k, s in stores.items()}
    minutes = sum(student_s) / 60
    wall_minutes = (time.perf_counter() - t0) / 60

    gains = [a - b for a, b in zip(rows["0.25x-I"], rows["0.25x"], strict=True)]
    ctrl = [a - b for a, b in zip(rows["0.25x-I-random"], rows["0.25x"], strict=True)]
    teacher_map = trec["metrics"]["map40"]
    tm = trec["metrics"]
    gain_mean = statistics.mean(gains)
    gain_sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
    ov = measure_input_overhead(p, steps=args.overhead_steps)
    ov_imit = measure_input_overhead(p, steps=args.overhead_steps, imitation=True)
    teacher_gap = teacher_map - statistics.mean(rows["0.25x"])
    result = {
        "preset": args.preset,
        "map40": {"1x": teacher_map, **rows},
        "teacher_gap": teacher_gap,
        "gain_mean": gain_mean, "gain_sd": gain_sd, "gains": gains,
        "control_gain_mean": statistics.mean(ctrl), "control_gains": ctrl,
        "control_gain_sd": statistics.stdev(ctrl) if len(ctrl) > 1 else 0.0,
        "best_weight": best_w, "weight_sweep_seed0": sweep,
        "minutes": minutes, "students_wall_minutes_this_invocation": wall_minutes,
        "teacher_minutes": teacher_minutes, "data_minutes": data_minutes,
        "measure_minutes": plan.get("measure_minutes", measure_minutes),
        "train_img_per_s": statistics.mean(img_s) if img_s else None,
        "train_img_per_s_by_model": {"1x": tm.get("train_img_per_s"),
                                     **{k: seed_metrics[k]["train_img_per_s"] for k in rows}},
        "input_overhead": ov["input_overhead"],
        "input_overhead_detail": {**ov, "with_imitation": ov_imit, "preset": args.preset},
        "plan": {k: v for k, v in plan.items()},
        "steps": {"teacher": plan["teacher_steps"], "student": plan["student_steps"], "batch": p["batch"]},
        "data": {"train_images": n_train, "val_images": n_val, "eval_images": n_eval, "data_hash": data_hash,
                 "image_size": list(hw), "student_augment": p["student_augment"]},
        "teacher": {"run": teacher_recipe["name"], "model": str(teacher_file), "sha256": sha256_file(teacher_file)},
        "feature_cache": {"enabled": p["feature_cache"], "stores": cache_stats,
                          "max_abs_diff": plan.get("speeds", {}).get("feature_cache_max_abs_diff")},
        "seed0_ap40": {"1x": tm.get("ap40"), **{k: seed_metrics[k]["ap40"] for k in rows}},
        "student_models": models,
        "eval_history": {"1x": tm.get("eval_history"),
                         **{k: seed_metrics[k].get("eval_history") for k in rows}},  # seed 0 (None: older runs)
        "total_minutes": (time.perf_counter() - t_start) / 60,
    }
    result["targets"] = {
        "teacher_gap>=5": teacher_gap >= 5, "gain_mean>=3": gain_mean >= 3.0, "gain_mean>2sd": gain_mean > 2 * gain_sd,
        "students<=90min": minutes <= 90, "teacher<=60min": teacher_minutes <= 60,
        "input_overhead<=15%": ov["input_overhead"] <= 0.15}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "imitation_gain.json").write_text(json.dumps(result, indent=2) + "\n")
    flops, params = _flops_params(hw)
    table = format_table([result_from_ap40(tm["ap40"])] + [result_from_ap40(seed_metrics[k]["ap40"]) for k in rows],
                         models=["1x", "0.25x", f"0.25x-I (w={best_w})", f"0.25x-I random 1x (w={best_w})"],
                         flops=[flops["1x"]] + [flops["0.25x"]] * 3, params=[params["1x"]] + [params["0.25x"]] * 3,
                         metrics="ap40",
                         extra=[{"train img/s": f"{tm.get('train_img_per_s') or 0:.1f}"}]
                         + [{"train img/s": f"{seed_metrics[k]['train_img_per_s'] or 0:.1f}"} for k in rows])
    fmt = lambda v: ", ".join(f"{x:+.2f}" for x in v)  # noqa: E731
    md = [f"# Imitation gain ({args.preset} preset)", "",
          f"SynthKITTI ({n_train} train / {n_val} val, eval on {n_eval}), input {hw[0]}x{hw[1]}, batch {p['batch']}; "
          f"teacher {plan['teacher_steps']} steps, students {plan['student_steps']} steps each.", "",
          f"Seed {s0}, AP40 (%):", "", table.rstrip(), "",
          "| model | mAP40 mean | per seed |", "|---|---|---|", f"| 1x | {teacher_map:.2f} | |"]
    for k, v in rows.items():
        md.append(f"| {k} | {statistics.mean(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    md += ["", f"- teacher gap (1x - mean 0.25x): {teacher_gap:.2f} mAP",
           f"- gain (0.25x-I - 0.25x) per seed: {fmt(gains)}; mean {gain_mean:+.2f}, sd {gain_sd:.2f}",
           f"- control (random 1x) per seed: {fmt(ctrl)}; mean {result['control_gain_mean']:+.2f}",
           f"- weight sweep (seed {s0}): {sweep}; best {best_w}",
           f"- minutes: students {minutes:.1f}, teacher {teacher_minutes:.1f}, data {data_minutes:.1f}, "
           f"throughput measurement {result['measure_minutes']:.1f}",
           f"- input overhead: {ov['input_overhead'] * 100:.1f}% (plain student step), "
           f"{ov_imit['input_overhead'] * 100:.1f}% (live-teacher imitation step)",
           f"- targets: {result['targets']}"]
    curves = {k: v for k, v in result["eval_history"].items() if v}
    if curves:
        md.append("- val mAP40 at each evaluation (seed 0): " + "; ".join(
            f"{k} " + ", ".join(f"{h['step']}: {h['map40']:.2f}" for h in v if h.get("map40") is not None)
            for k, v in curves.items()))
    (out_dir / "imitation_gain.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
