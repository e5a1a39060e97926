"""Fixed-input numbers of ShuffleDet's outputs, loss, decode, imitation mask, a 3-step distillation
run and the exported ONNX graph, computed through the *public paths* (the trainer, the exporter).

``tests/data/shuffledet_contract.json`` holds them as computed before the detector contract
(issue #20) existed; ``test_contract.py`` recomputes them through the contract and compares.
Regenerate (only when a behaviour change is intended): ``python tests/_contract_golden.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HW = (64, 192)
GOLDEN = Path(__file__).parent / "data" / "shuffledet_contract.json"


def fixed_batch():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(2, 3, *HW, generator=g) * 50
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [100.0, 5.0, 130.0, 60.0]]),
                "labels": torch.tensor([0, 2]), "image_id": "a", "orig_size": (128, 384)},
               {"boxes": torch.tensor([[30.0, 20.0, 90.0, 40.0]]), "labels": torch.tensor([1]),
                "image_id": "b", "orig_size": HW}]
    return x, targets


def model_numbers() -> dict:
    """Outputs, loss, detections and mask through the pre-contract functions."""
    from compressdet.losses import SqueezeDetLoss, imitation_mask
    from compressdet.models import PostProcessor, build_model
    from compressdet.models.anchors import generate_anchors

    torch.manual_seed(0)
    model = build_model("shuffledet_0.25x", image_size=HW).eval()
    x, targets = fixed_batch()
    with torch.no_grad():
        out, feat = model.forward_with_features(x)
    anchors = generate_anchors(HW)
    loss = SqueezeDetLoss(anchors, image_size=HW)(out, targets)
    dets = PostProcessor(HW, score_thresh=0.0)(out, [t["orig_size"] for t in targets])
    mask = imitation_mask([t["boxes"] for t in targets], anchors, tuple(feat.shape[-2:]), 9, 0.5)
    return {"out_sum": float(out.double().sum()), "out_abs": float(out.double().abs().sum()),
            "feat_sum": float(feat.double().sum()),
            "loss": {k: float(v) for k, v in loss.items()},
            "dets": [{"n": len(d["boxes"]), "boxes": float(d["boxes"].double().sum()),
                      "scores": float(d["scores"].double().sum()), "labels": int(d["labels"].sum())} for d in dets],
            "mask": mask.nonzero().tolist()}


def trainer_numbers(tmp: Path) -> dict:
    """3 steps of fgfi + pkd + crosskd distillation through Trainer (the engine path)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_engine import make_trainer

    from compressdet.recipe import DistillConfig

    cfgs = [DistillConfig(method="fgfi"), DistillConfig(method="pkd", weight=0.5), DistillConfig(method="crosskd")]
    tr = make_trainer(tmp, steps=3, imitation=cfgs, evaluate=False, checkpoint_every=100)
    summary = tr.fit()
    params = sum(float(p.detach().double().sum()) for p in tr.model.parameters())
    return {"final_losses": summary["final_losses"], "param_sum": params}


def graph_digest(path: Path) -> str:
    """sha256 of the graph without names: each node's op type, attributes and the contents of the
    initializers it reads, in order (the dynamo exporter's value names depend on what the process
    traced before, so ``graph_sha256`` differs between runs of one model)."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: hashlib.sha256(numpy_helper.to_array(i).tobytes()).hexdigest() for i in g.initializer}
    parts = [(n.op_type, tuple(inits.get(i, "-") for i in n.input),
              tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))) for n in g.node]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def onnx_numbers(tmp: Path) -> dict:
    from compressdet.export._onnx import export_onnx
    from compressdet.models import build_model

    torch.manual_seed(0)
    model = build_model("shuffledet_0.25x", image_size=HW).eval()
    # the rewrites the golden graph was recorded with (the exporter's default then; the default now pads
    # bottlenecks to 16, benchmarks/results/fp32_rewrites.json): the check is "same graph for the same settings"
    rewrites = {"fold_shuffle": True, "pad_bottleneck": 4, "pool_as_conv": False, "pad_stem": None}
    info = export_onnx(model, tmp / "m.onnx", image_size=HW, log=lambda s: None, fp32_rewrites=rewrites)
    return {"graph_digest": graph_digest(tmp / "m.onnx"), "outputs": info["outputs"]}


def compute(tmp: Path) -> dict:
    torch.set_num_threads(1)
    return {"model": model_numbers(), "trainer": trainer_numbers(tmp / "train"), "onnx": onnx_numbers(tmp)}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = compute(Path(d))
    GOLDEN.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res)[:2000])
