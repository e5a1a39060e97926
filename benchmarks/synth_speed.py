"""SynthKITTI generation speed (target: >= 20 images/s at 1242x375 on one core).

    python benchmarks/synth_speed.py --num-images 40 --size 1242x375

Times render + PNG encode + label write per image, single process, and writes
benchmarks/results/synth_speed.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from compressdet._io import atomic_write_json
from compressdet.data.synth import generate_synth, render_image, sample_layout
from compressdet.pipeline import cpu_platform
from compressdet.recipe import SynthConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-images", type=int, default=40)
    ap.add_argument("--size", default="1242x375")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synth_speed.json")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    t0 = time.perf_counter()
    for i in range(a.num_images):
        rng = np.random.default_rng((0, i))
        render_image(rng, sample_layout(rng, (w, h)), (w, h))
    render_s = (time.perf_counter() - t0) / a.num_images
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        generate_synth(Path(d) / "s", SynthConfig(num_images=a.num_images, size=(w, h)))
        total_s = (time.perf_counter() - t0) / a.num_images
    res = {"size": [w, h], "num_images": a.num_images, "render_ms": round(render_s * 1e3, 1),
           "render_encode_write_ms": round(total_s * 1e3, 1), "images_per_s": round(1 / total_s, 1),
           "machine": cpu_platform()}
    print(f"{'size':>10} {'render ms':>10} {'total ms':>9} {'images/s':>9}")
    print(f"{a.size:>10} {res['render_ms']:>10} {res['render_encode_write_ms']:>9} {res['images_per_s']:>9}")
    atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
