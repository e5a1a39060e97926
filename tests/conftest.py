"""Shared fixtures: paths to ../shared and small helpers; tests keep torch to one thread."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KITTI_REAL = SHARED / "kitti_real"

os.environ.setdefault("OMP_NUM_THREADS", "1")

# Ultralytics writes its settings file on import: one temp folder per test process (the yolo tests'
# subprocesses share it), never the user's home, and removed when the process ends
if "YOLO_CONFIG_DIR" not in os.environ:
    _yolo_dir = tempfile.mkdtemp(prefix="compressdet-test-ultralytics-")
    os.environ["YOLO_CONFIG_DIR"] = _yolo_dir
    atexit.register(shutil.rmtree, _yolo_dir, ignore_errors=True)


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def kitti_real() -> Path:
    if not (KITTI_REAL / "training" / "label_2").is_dir():
        pytest.skip(f"real KITTI sample data not found at {KITTI_REAL} (../shared/kitti_real beside the repo)")
    return KITTI_REAL


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data sets go to one per-session cache, never to the user's home."""
    cache = tmp_path_factory.getbasetemp() / "compressdet-cache"
    monkeypatch.setenv("COMPRESSDET_CACHE", str(cache))
