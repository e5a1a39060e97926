"""``compressdet info`` on a model file of each family: the table and its output line (the FPN and yolo
families name their raw outputs in a dict, ShuffleDet has one grid tensor; a KeyError: 0 crashed it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from compressdet.models.yolo import ultralytics_available

SIZE = (64, 96)

FAMILIES = [
    ("shuffledet_0.25x", "output: 72 x 4 x 6 (channels x grid)"),
    ("fcos_mnv3_small", "output: cls_logits 129 x 3, bbox_regression 129 x 4, bbox_ctrness 129 x 1"),
    ("retinanet_mnv3_small", "output: cls_logits"),
    pytest.param("yolov8n", "output: box_dist 64 x 126, cls_logits 3 x 126",
                 marks=pytest.mark.skipif(not ultralytics_available(), reason="ultralytics not installed")),
]


@pytest.mark.parametrize("name,expected", FAMILIES)
def test_info_on_a_model_file(tmp_path, name, expected):
    from compressdet.models import build_model, save_model

    torch.manual_seed(0)
    path = save_model(build_model(name, image_size=SIZE, num_classes=3), tmp_path / f"{name}.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "YOLO_CONFIG_DIR": os.environ["YOLO_CONFIG_DIR"]}
    r = subprocess.run([sys.executable, "-m", "compressdet", "info", str(path)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "internal error" not in r.stdout + r.stderr
    assert expected in r.stdout, r.stdout
    assert f"at {SIZE[0]}x{SIZE[1]}" in r.stdout and "total" in r.stdout
    assert "None" not in r.stdout  # rows without one out-channel count / stride show '-'
