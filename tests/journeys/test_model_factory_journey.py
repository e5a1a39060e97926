"""Your own model from the command line (issue #39): a model factory in a ``.py`` file beside the recipe,
through ``recipe check``, ``run`` (train, prune, ptq), ``export``, ``bench`` (torch and ort) and ``predict``,
each ``python -m compressdet`` in a fresh process in the user's folder. Nothing registers the model: every
process (bench's timing children included) rebuilds it from the factory the model file records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FACTORY = '''\
"""A tiny FCOS of my own: five stride-2 conv blocks, torchvision's FPN and FCOS head."""
from collections import OrderedDict

from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build(num_classes, width=8, fpn_channels=64):
    w = width
    body = nn.Sequential(OrderedDict(stem=_block(3, w), c2=_block(w, w), c3=_block(w, 2 * w), c4=_block(2 * w, 4 * w),
                                     c5=_block(4 * w, 8 * w)))
    backbone = BackboneWithFPN(body, {"c3": "0", "c4": "1", "c5": "2"}, [2 * w, 4 * w, 8 * w], fpn_channels,
                               extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    return FCOS(backbone, num_classes, head=FCOSHead(fpn_channels, 1, num_classes, num_convs=1))
'''

SCHED = "{steps: %d, batch_size: 2, lr: 0.01, eval_every: %d, checkpoint_every: %d, threads: 1, log_every: 1}"

RECIPE = f"""\
name: mine
seed: 0
device: cpu
data:
  format: synth
  image_size: [64, 128]
  classes: [car, pedestrian]
  synth: {{num_images: 10, size: [384, 128], seed: 0}}
  augment: {{enabled: false}}
  max_val_images: 2
  max_test_images: 2
stages:
  - name: train
    kind: train
    model: {{factory: ./my_detector.py:build, args: {{width: 8}}}}
    schedule: {SCHED % (3, 3, 3)}
  - name: pruned
    kind: prune
    from: train
    target: {{macs: 0.8}}
    schedule: {SCHED % (1, 1, 1)}
  - {{name: int8, kind: ptq, from: pruned, calibration_draw: first}}
"""


def run(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "compressdet", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    if ok:
        assert p.returncode == 0, f"compressdet {' '.join(args)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_a_model_factory_file_runs_through_every_command(tmp_path):
    (tmp_path / "my_detector.py").write_text(FACTORY)
    (tmp_path / "recipe.yaml").write_text(RECIPE)

    out = run(["recipe", "check", "recipe.yaml"], tmp_path).stdout
    assert "ok recipe.yaml" in out and "factory ./my_detector.py:build" in out

    run(["run", "recipe.yaml", "--run-dir", "run"], tmp_path)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {s: r["status"] for s, r in manifest["stages"].items()} == {"train": "done", "pruned": "done", "int8": "done"}
    import torch

    from compressdet.models._factory import file_sha256

    arch = torch.load(tmp_path / "run" / "train" / "model.pt", weights_only=True)["arch"]
    assert arch["factory"] == f"{(tmp_path / 'my_detector.py').resolve()}:build" and arch["args"] == {"width": 8}
    assert arch["sha256"] == file_sha256(tmp_path / "my_detector.py") and arch["classes"] == ["car", "pedestrian"]

    # from here on, every command is a new process that only has the run folder
    run(["export", "run", "--stage", "pruned", "--onnx", "--out", "exported"], tmp_path)
    graphs = sorted(p.name for p in (tmp_path / "exported").glob("*.onnx"))
    assert graphs, sorted(p.name for p in (tmp_path / "exported").iterdir())

    run(["bench", "run", "--stages", "pruned,int8", "--backends", "torch,ort", "--runs", "2", "--warmup", "1",
         "--rounds", "1", "--batch-sizes", "1", "--threads", "1"], tmp_path)
    report = json.loads((tmp_path / "run" / "bench" / "report.json").read_text())
    timed = {(r["stage"], b) for r in report["rows"] for b, lat in r["latency"].items() if lat["b1"]["median_ms"] > 0}
    assert {("pruned", "torch"), ("pruned", "ort"), ("int8", "torch")} <= timed
    assert report["classes"] == ["car", "pedestrian"]

    (tmp_path / "images").mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (256, 96), (40 * i, 90, 160)).save(tmp_path / "images" / f"img{i}.png")
    run(["predict", "images", "--model", "run", "--stage", "pruned", "--out", "pred", "--save-txt", "kitti",
         "--score-threshold", "0"], tmp_path)
    labels = sorted(p.name for p in (tmp_path / "pred" / "labels").glob("*.txt"))
    assert labels == ["img0.txt", "img1.txt"]
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == ["img0.png", "img1.png"]
    # the exported graph decodes through the family rebuilt from its metadata's arch (the factory again)
    run(["predict", "images", "--model", f"exported/{graphs[0]}", "--out", "pred_onnx", "--save-txt", "kitti",
         "--score-threshold", "0"], tmp_path)

    def boxes(folder: str) -> list[list[float]]:
        text = (tmp_path / folder / "labels" / "img0.txt").read_text().splitlines()
        return [[float(v) for v in line.split()[4:8]] for line in text]

    torch_boxes, ort_boxes = boxes("pred"), boxes("pred_onnx")
    assert torch_boxes and len(torch_boxes) == len(ort_boxes)
    assert max(abs(a - b) for ta, oa in zip(torch_boxes, ort_boxes) for a, b in zip(ta, oa)) < 0.5
    # the factory file is gone: a new process says which file it needs, in one line
    (tmp_path / "my_detector.py").rename(tmp_path / "elsewhere.py")
    p = run(["predict", "images", "--model", "run/train/model.pt", "--out", "pred2"], tmp_path, ok=False)
    assert p.returncode == 2 and "my_detector.py' does not exist" in p.stderr, p.stderr


def test_a_model_factory_trains_under_torchrun(tmp_path):
    """Every DDP worker builds the model from the recipe's factory (no registration in any process)."""
    (tmp_path / "my_detector.py").write_text(FACTORY)
    (tmp_path / "recipe.yaml").write_text(RECIPE.split("  - name: pruned")[0])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "compressdet", "run", "recipe.yaml", "--run-dir", "run"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "done"
    import torch

    arch = torch.load(tmp_path / "run" / "train" / "model.pt", weights_only=True)["arch"]
    assert arch["factory"].endswith("my_detector.py:build")
