"""Reproducible artifacts: the same recipe, seed and inputs give byte-identical files.

A tiny recipe (train -> prune -> QAT -> export fp32 + INT8 (+ OpenVINO IR when installed), and an ORT
PTQ export of the pruned model) runs twice into two run folders, the
second time killed (SIGKILL) right after the student's first checkpoint and resumed with
``--resume``. Model files, checkpoints, the .pt2 program, ONNX files (fp32 and INT8), IR files and
every artifact sha256 in the two manifests must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

RECIPE = """name: repro
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 192]
  synth: {{num_images: 12, size: [248, 75], seed: 0, cache_dir: {cache}}}
  augment: {{enabled: true}}
  max_val_images: 2
stages:
  - name: student
    kind: train
    model: shuffledet_0.25x
    schedule: {{steps: 4, batch_size: 2, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}}
    eval: {{max_images: 2, batch_size: 2, num_images_logged: 0}}
  - name: pruned
    kind: prune
    from: student
    target: {{macs: 0.7}}
    schedule: {{steps: 2, batch_size: 2, lr: 0.005, eval_every: 2, checkpoint_every: 2, log_every: 1, threads: 1}}
    eval: {{max_images: 2, batch_size: 2, num_images_logged: 0}}
  - name: int8
    kind: qat
    from: pruned
    quant: {{calibration_images: 2}}
    schedule: {{steps: 2, batch_size: 2, lr: 0.001, log_every: 1, threads: 1}}
    eval: {{batch_size: 2}}
  - name: export
    kind: export
    from: int8
    formats: [onnx, onnx-int8{ov}]
  - name: export_ptq
    kind: export
    from: pruned
    formats: [onnx-int8]
    calibration_images: 2
"""

# run in a child process; KILL_AFTER=<stage>:<step> SIGKILLs it right after that stage's last.pt of that step
_SCRIPT = r"""
import os, signal, sys
import compressdet.engine.trainer as trainer
from compressdet.cli import main

kill = os.environ.get("KILL_AFTER")
if kill:
    stage, step = kill.split(":")
    _save = trainer.save_checkpoint

    def save_then_die(state, path):
        _save(state, path)
        if os.path.basename(str(path)) == "last.pt" and f"/{stage}/" in str(path) and state["step"] == int(step):
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.save_checkpoint = save_then_die
sys.exit(main(["run", *sys.argv[1:]]))
"""


def _run(tmp_path: Path, recipe: Path, run_dir: Path, *extra: str, kill: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    import compressdet

    root = str(Path(compressdet.__file__).resolve().parents[1])  # the child imports this checkout's package
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AFTER": kill,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, str(script), str(recipe), "--run-dir", str(run_dir), *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every model-like file of a run: model files, checkpoints, .pt2, ONNX, pruning history, reports."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.suffix in (".pt", ".pt2", ".onnx", ".json", ".xml", ".bin") and p.name != "manifest.json":
            if p.name.endswith(".export.json"):
                continue
            out[str(p.relative_to(run_dir))] = p.read_bytes()
    return out


def test_same_recipe_twice_gives_identical_bytes_even_after_a_kill_and_resume(tmp_path):
    recipe = tmp_path / "repro.yaml"
    try:
        import openvino  # noqa: F401

        ov = ", openvino, openvino-int8"
    except ImportError:
        ov = ""
    recipe.write_text(RECIPE.format(cache=tmp_path / "synth", ov=ov))
    a = _run(tmp_path, recipe, tmp_path / "a")
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    killed = _run(tmp_path, recipe, tmp_path / "b", kill="student:2")
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    man_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man_b["stages"]["student"]["status"] == "running"
    resumed = _run(tmp_path, recipe, tmp_path / "b", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(fa) == set(fb)
    for key in ("student/model.pt", "pruned/model.pt", "int8/quantized.pt2", "int8/model_int8.onnx",
                "export/pruned.onnx", "export/int8.int8.onnx", "student/checkpoints/last.pt",
                "student/checkpoints/best.pt", "pruned/checkpoints/last.pt", "export_ptq/pruned.int8.onnx",
                *(("export/pruned.xml", "export/pruned.bin", "export/int8.int8.xml", "export/int8.int8.bin")
                  if ov else ())):
        assert key in fa, sorted(fa)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, f"byte-different files: {differ}"

    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())["stages"]
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"]
    for name, rec in ma.items():
        assert rec["status"] == mb[name]["status"] == "done"
        assert {k: v["sha256"] for k, v in rec["artifacts"].items()} == \
               {k: v["sha256"] for k, v in mb[name]["artifacts"].items()}, name
    # the fp32 ONNX names the model file it came from by sha256: the same in both runs
    from compressdet.export.runtime import onnx_metadata

    src = onnx_metadata(tmp_path / "a" / "export" / "pruned.onnx")["source_sha256"]
    assert src == ma["pruned"]["artifacts"]["model"]["sha256"]


def test_canonical_keeps_state_dict_versions():
    """load_state_dict reads the module versions in ``_metadata``; a canonical copy must keep them
    (without them a QAT observer reloads as an old version and keeps its default eps)."""
    from compressdet._io import canonical

    sd = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1)).state_dict()
    out = canonical(sd)
    assert out._metadata == sd._metadata and list(out) == list(sd)
