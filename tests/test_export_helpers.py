"""A tiny run directory built by hand (manifest + save_model at 64x192 + recipe.yaml on a tiny SynthKITTI)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from compressdet._io import sha256_file

SIZE = (64, 192)


def make_model(arch: str = "shuffledet_0.25x", seed: int = 0):
    from compressdet.models import build_model

    torch.manual_seed(seed)
    m = build_model(arch, image_size=SIZE).eval()
    torch.nn.init.normal_(m.head.conv.weight, std=0.03)  # the seed's 1e-4 init gives near-constant outputs
    return m


def make_run(root: Path, *, name: str = "tiny", stamp: str = "20250101-000000", stages=("student", "pruned")) -> Path:
    from compressdet.models import save_model

    run = root / name / stamp
    run.mkdir(parents=True)
    recipe = {"name": name, "data": {"format": "synth", "image_size": list(SIZE), "max_val_images": 2,
                                     "synth": {"num_images": 8, "size": [384, 128], "cache_dir": str(root / "synth")}},
              "stages": [{"name": s, "kind": "train", "model": "shuffledet_0.25x"} for s in stages]}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    man = {"recipe": name, "run_id": stamp, "stages": {}}
    prev = None
    for i, s in enumerate(stages):
        p = run / s / "model.pt"
        p.parent.mkdir()
        save_model(make_model(seed=i), p)
        man["stages"][s] = {"kind": "train", "status": "done", "inputs": {"from": prev} if prev else {},
                            "artifacts": {"model": {"path": f"{s}/model.pt", "sha256": sha256_file(p)}}}
        prev = s
    (run / "manifest.json").write_text(json.dumps(man))
    return run
