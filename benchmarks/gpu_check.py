"""One command for a CUDA machine: everything this project has only tested on CPU, in under 8 minutes.

    python benchmarks/gpu_check.py            # writes benchmarks/results/gpu_check.json

Steps (each passed / failed / skipped with the reason; a step whose input failed is skipped):

1. ``cuda_tests``: the tests that skip themselves without CUDA (found by reading tests/: a test whose
   decorators or body mention ``cuda`` or ``_need_gpu``), run with pytest.
2. ``ddp_amp_smoke``: ``torchrun --nproc_per_node=<GPUs>`` of a tiny SynthKITTI recipe on CUDA (DDP with
   SyncBatchNorm, AMP on).
3. ``ptq_s8_symmetric``: a single-process PTQ stage with ``activations: s8_symmetric`` in the same run (its
   QDQ graph passes ``check_int8_graph``: most convs int8).
4. ``tensorrt_fp16``: ``compressdet export --onnx --tensorrt`` of the student; the engine vs PyTorch.
5. ``tensorrt_int8``: an INT8 engine from the ``s8_symmetric`` QDQ graph of step 3 (``check_int8_graph(tensorrt=True)``
   first); the engine vs the QDQ graph in ONNX Runtime.
6. ``bench_tensorrt``: ``compressdet bench --backends torch,tensorrt`` of the run; latencies (CUDA events) recorded.

On a machine without CUDA every step is skipped with the reason "no CUDA" and the script exits 0
(``tests/test_gpu_check.py`` checks that). Exit code 1 when a step failed.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUDGET_S = 7.5 * 60

RECIPE = """name: gpu_check
seed: 0
device: {device}
data:
  format: synth
  image_size: [64, 192]
  synth: {{num_images: 16, size: [384, 128], seed: 0, cache_dir: {cache}}}
  max_val_images: 4
stages:
  - name: student
    kind: train
    model: shuffledet_0.25x
    schedule: {{steps: 6, batch_size: 4, eval_every: 6, checkpoint_every: 3, log_every: 1, amp: true}}
    eval: {{max_images: 4, batch_size: 4, num_images_logged: 0}}
"""
PTQ_STAGE = """  - name: ptq_trt
    kind: ptq
    from: student
    quant: {calibration_images: 4, activations: s8_symmetric}
    eval: {batch_size: 4}
"""


def cuda_tests(tests_dir: Path = REPO / "tests") -> list[str]:
    """pytest node ids of the tests that need CUDA (their decorators or body mention cuda/_need_gpu)."""
    ids = []
    for f in sorted(tests_dir.glob("test_*.py")):
        text = f.read_text()
        if "cuda" not in text:
            continue
        lines = text.splitlines()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
                src = "\n".join(lines[start:node.end_lineno])
                if "cuda" in src or "_need_gpu" in src:
                    ids.append(f"{f.relative_to(REPO)}::{node.name}")
    return ids


class Check:
    """Runs steps within the time budget and records what happened."""

    def __init__(self, budget_s: float = BUDGET_S):
        self.t0, self.budget = time.monotonic(), budget_s
        self.steps: dict[str, dict[str, Any]] = {}
        self.latencies: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def skip(self, name: str, reason: str) -> None:
        self.steps[name] = {"status": "skipped", "reason": reason}
        print(f"[skipped] {name}: {reason}", flush=True)

    def run(self, name: str, fn: Callable[[float], dict[str, Any]], *, needs: tuple[str, ...] = (),
            max_s: float = 180) -> bool:
        for n in needs:
            if self.steps.get(n, {}).get("status") != "passed":
                self.skip(name, f"needs step '{n}' ({self.steps.get(n, {}).get('status', 'not run')})")
                return False
        timeout = min(max_s, self.left())
        if timeout < 20:
            self.skip(name, f"time budget of {self.budget / 60:.1f} min used up")
            return False
        t = time.monotonic()
        try:
            details = fn(timeout) or {}
            rec = {"status": "passed", **details}
        except subprocess.TimeoutExpired as e:
            rec = {"status": "failed", "reason": f"timed out after {e.timeout:.0f} s"}
        except Exception as e:  # noqa: BLE001 - any failure is recorded, the next steps still run
            rec = {"status": "failed", "reason": f"{type(e).__name__}: {str(e).strip()[-1500:]}"}
        rec["seconds"] = round(time.monotonic() - t, 1)
        self.steps[name] = rec
        print(f"[{rec['status']}] {name} ({rec['seconds']} s){': ' + rec['reason'] if 'reason' in rec else ''}",
              flush=True)
        return rec["status"] == "passed"


def _sh(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           **(env or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if out.returncode != 0:
        tail = (out.stdout[-1500:] + "\n" + out.stderr[-2500:]).strip()
        raise RuntimeError(f"{' '.join(cmd[:6])}... exit {out.returncode}: {tail}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--budget-min", type=float, default=BUDGET_S / 60, help="stop starting steps after this")
    args = ap.parse_args(argv)

    import torch

    chk = Check(args.budget_min * 60)
    report: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                              "cuda_available": torch.cuda.is_available(), "packages": _versions()}
    steps = ["cuda_tests", "ddp_amp_smoke", "ptq_s8_symmetric", "tensorrt_fp16", "tensorrt_int8", "bench_tensorrt"]
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        if not torch.cuda.is_available():
            for s in steps:
                chk.skip(s, "no CUDA")
        else:
            _run_gpu(chk, report, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["steps"] = chk.steps
    report["latencies"] = chk.latencies
    report["summary"] = {k: sum(1 for s in chk.steps.values() if s["status"] == k)
                         for k in ("passed", "failed", "skipped")}
    report["seconds"] = round(time.monotonic() - chk.t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from compressdet._io import atomic_write_json

    atomic_write_json(args.out, report)
    print(f"wrote {args.out}: {report['summary']}")
    return 1 if report["summary"]["failed"] else 0


def _run_gpu(chk: Check, report: dict[str, Any], work: Path) -> None:
    import torch

    n_gpu = torch.cuda.device_count()
    report["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(n_gpu)]
    try:
        import tensorrt

        report["tensorrt"] = tensorrt.__version__
        no_trt = None
    except ImportError:
        no_trt = "tensorrt is not installed (pip install 'compressdet[tensorrt]')"
    py = sys.executable
    run_dir = work / "run"

    def step_tests(timeout: float) -> dict[str, Any]:
        ids = cuda_tests()
        xml = work / "cuda_tests.xml"
        out = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *ids],
                             capture_output=True, text=True, timeout=timeout, cwd=REPO)
        res = _junit_outcomes(xml, ids)
        if out.returncode != 0:
            raise RuntimeError(f"pytest exit {out.returncode}: {res}; {out.stdout[-1500:]}")
        return {"tests": res}

    def step_ddp(timeout: float) -> dict[str, Any]:
        recipe = work / "gpu_check.yaml"
        recipe.write_text(RECIPE.format(device="cuda", cache=work / "synth"))
        _sh([py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_gpu}", "-m", "compressdet",
             "run", str(recipe), "--run-dir", str(run_dir)], timeout)
        man = json.loads((run_dir / "manifest.json").read_text())["stages"]["student"]
        if man["status"] != "done":
            raise RuntimeError(f"student stage {man['status']}: {man.get('error')}")
        return {"world_size": n_gpu, "amp": True, "train_img_per_s": man["metrics"].get("train_img_per_s"),
                "map40": man["metrics"].get("map40")}

    def step_ptq(timeout: float) -> dict[str, Any]:
        recipe = work / "gpu_check.yaml"
        recipe.write_text(RECIPE.format(device="cuda", cache=work / "synth") + PTQ_STAGE)
        _sh([py, "-m", "compressdet", "run", str(recipe), "--run-dir", str(run_dir), "--resume"], timeout)
        man = json.loads((run_dir / "manifest.json").read_text())["stages"]["ptq_trt"]
        if man["status"] != "done":
            raise RuntimeError(f"ptq_trt stage {man['status']}: {man.get('error')}")
        return {"graph": man["metrics"].get("graph"), "map40": man["metrics"].get("map40")}

    def step_trt_fp16(timeout: float) -> dict[str, Any]:
        _sh([py, "-m", "compressdet", "export", str(run_dir), "--stage", "student", "--onnx", "--tensorrt",
             "--dynamic-batch"], timeout)
        return _compare_engine(run_dir / "exports" / "student.engine", run_dir / "student" / "model.pt", None)

    def step_trt_int8(timeout: float) -> dict[str, Any]:
        sys.path.insert(0, str(REPO))
        from compressdet.export._tensorrt import build_engine
        from compressdet.quant.onnx_int8 import check_int8_graph

        man = json.loads((run_dir / "manifest.json").read_text())["stages"]["ptq_trt"]
        qdq = run_dir / man["artifacts"]["onnx_int8"]["path"]
        check_int8_graph(qdq, tensorrt=True)
        engine = work / "ptq_trt.int8.engine"
        info = build_engine(qdq, engine, int8=True)
        return {**_compare_engine(engine, None, qdq), "precision": info.get("precision")}

    def step_bench(timeout: float) -> dict[str, Any]:
        _sh([py, "-m", "compressdet", "bench", str(run_dir), "--backends", "torch,ort,tensorrt", "--runs", "30",
             "--warmup", "5", "--batch-sizes", "1,8", "--rounds", "1"], timeout)
        rep = json.loads((run_dir / "bench" / "report.json").read_text())
        for r in rep["rows"]:
            chk.latencies[r["label"]] = {b: {k: c.get("median_ms", c.get("skipped")) for k, c in cells.items()
                                             if k.startswith("b")} if "skipped" not in cells else cells["skipped"]
                                         for b, cells in r["latency"].items()}
        return {"cuda_device": rep.get("cuda_device"), "tensorrt": rep.get("tensorrt"),
                "eval_tensorrt": {r["label"]: (r.get("eval_by_backend") or {}).get("tensorrt", {}).get("map40")
                                  for r in rep["rows"]}}

    chk.run("cuda_tests", step_tests, max_s=150)
    chk.run("ddp_amp_smoke", step_ddp, max_s=200)
    chk.run("ptq_s8_symmetric", step_ptq, needs=("ddp_amp_smoke",), max_s=150)
    if no_trt:
        for s in ("tensorrt_fp16", "tensorrt_int8", "bench_tensorrt"):
            chk.skip(s, no_trt)
        return
    chk.run("tensorrt_fp16", step_trt_fp16, needs=("ddp_amp_smoke",), max_s=120)
    chk.run("tensorrt_int8", step_trt_int8, needs=("ptq_s8_symmetric",), max_s=120)
    chk.run("bench_tensorrt", step_bench, needs=("tensorrt_fp16",), max_s=150)


def _versions() -> dict[str, str | None]:
    """Versions of what the checks depend on (a GPU machine's image may differ from the pins)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "torchao", "torch-pruning", "onnx", "onnxruntime", "tensorrt"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _junit_outcomes(xml: Path, ids: list[str]) -> dict[str, str]:
    """``{node id: passed | failed | skipped | error | not run}`` from pytest's JUnit XML report."""
    import xml.etree.ElementTree as ET

    found: dict[str, str] = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            kids = {c.tag for c in case}
            found[node] = next((s for k, s in (("failure", "failed"), ("error", "error"), ("skipped", "skipped"))
                                if k in kids), "passed")
    return {i: found.get(i, "not run") for i in ids}


def _compare_engine(engine: Path, model_file: Path | None, onnx: Path | None) -> dict[str, Any]:
    """Run the engine on a synthetic image against PyTorch (model_file) or ONNX Runtime (onnx)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from compressdet.export._onnx import synthetic_image
    from compressdet.export._tensorrt import TensorRTRunner

    trt = TensorRTRunner(engine)
    h, w = int(trt.input_shape[2]), int(trt.input_shape[3])
    x = synthetic_image((h, w))
    got = np.asarray(trt(x.numpy()))
    if model_file is not None:
        from compressdet.models import load_model

        model, _ = load_model(model_file)
        with torch.no_grad():
            ref = model.eval()(x).numpy()
        vs = "pytorch fp32"
    else:
        from compressdet.export.runtime import ort_run, ort_session

        ref = ort_run(ort_session(onnx), x.numpy())[0]
        vs = "onnxruntime int8 (same QDQ graph)"
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise RuntimeError(f"engine output {got.shape} (finite: {np.isfinite(got).all()}) vs {ref.shape}")
    diff = float(np.abs(got - ref).max())
    return {"engine": str(engine.name), "engine_bytes": engine.stat().st_size, "max_abs_diff": diff, "vs": vs,
            "ref_max_abs": float(np.abs(ref).max())}


if __name__ == "__main__":
    sys.exit(main())
