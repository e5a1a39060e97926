"""MACs and params of the three ShuffleDet widths against the seed's numbers (METHOD.md).

    python benchmarks/model_parity.py     # seconds; writes benchmarks/results/model_parity.json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# METHOD.md's table at 384x1248: backbone MACs (G) and params (M)
SEED = {"shuffledet_1x": (5.238, 1.629), "shuffledet_0.5x": (1.588, 0.549), "shuffledet_0.25x": (0.667, 0.2095)}


def main() -> int:
    from compressdet._io import atomic_write_json
    from compressdet.models import build_model
    from compressdet.models.summary import model_summary

    hw = (384, 1248)
    out = {"image_size": list(hw), "command": "python benchmarks/model_parity.py", "models": {}}
    for name, (macs_g, params_m) in SEED.items():
        s = model_summary(build_model(name, image_size=hw), hw)
        out["models"][name] = {"backbone_macs": s["macs"]["backbone"], "params": s["params_with_bn_stats"]["total"],
                               "seed_backbone_macs_g": macs_g, "seed_params_m": params_m}
    atomic_write_json(ROOT / "benchmarks" / "results" / "model_parity.json", out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
