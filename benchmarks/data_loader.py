"""Input-pipeline throughput: PNG decode vs the uint8 memmap cache, against a training step.

    python benchmarks/data_loader.py --num-images 32 --image-size 384x1248 --workers 0 1

Measures images/s of the loader alone (training transform on, batch 8) for decode and cache paths
and each worker count, and the time of one SGD step of a small conv net on the same batch, so the
table says whether data loading would starve training. Writes benchmarks/results/data_loader.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from compressdet._io import atomic_write_json
from compressdet.data import build_dataset, build_loader
from compressdet.pipeline import cpu_platform
from compressdet.recipe import DataConfig


def _rate(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # warm-up: worker start, first memmap page-in
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        images, _ = next(it)
        n += len(images)
    return n / (time.perf_counter() - t0)


def _step_rate(size: tuple[int, int], batch: int, steps: int = 3) -> float:
    """images/s of forward+backward+SGD of a small strided conv net (a stand-in detector)."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 72, 3, 2, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(batch, 3, *size)
    net(x).square().mean().backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-images", type=int, default=32)
    ap.add_argument("--image-size", default="384x1248", help="model input HxW")
    ap.add_argument("--synth-size", default="1242x375", help="generated image WxH")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_loader.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    H, W = (int(x) for x in a.image_size.split("x"))
    sw, sh = (int(x) for x in a.synth_size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        os.environ["COMPRESSDET_CACHE"] = d
        cfg = DataConfig(format="synth", image_size=(H, W), synth={"num_images": a.num_images, "size": (sw, sh),
                                                                   "val_fraction": 0.1})
        for cache in (False, True):
            t0 = time.perf_counter()
            ds = build_dataset(cfg.model_copy(update={"cache": cache}), "train", train=True)
            build_s = time.perf_counter() - t0
            for nw in a.workers:
                loader = build_loader(ds, batch_size=a.batch_size, train=True, seed=0, num_workers=nw)
                rows.append({"path": "cache" if cache else "decode", "workers": nw,
                             "images_per_s": round(_rate(loader, a.batches), 1),
                             "setup_s": round(build_s, 1)})
    step = _step_rate((H, W), a.batch_size)
    res = {"image_size": [H, W], "synth_size": [sw, sh], "batch_size": a.batch_size, "threads": a.threads,
           "cpu_count": os.cpu_count(), "machine": cpu_platform(),
           "loader": rows, "small_convnet_train_images_per_s": round(step, 1)}
    print(f"{'path':>7} {'workers':>7} {'images/s':>9} {'setup s':>8}")
    for r in rows:
        print(f"{r['path']:>7} {r['workers']:>7} {r['images_per_s']:>9} {r['setup_s']:>8}")
    print(f"small conv net training step: {step:.1f} images/s (batch {a.batch_size}, {a.threads} thread(s))")
    atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
