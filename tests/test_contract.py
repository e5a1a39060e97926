"""Detector contract (issue #20): ShuffleDet on it with no behaviour change.

The golden file ``tests/data/shuffledet_contract.json`` was computed before the contract existed
(``tests/_contract_golden.py``); here the same numbers come through the contract's members and
through the trainer / exporter that now talk to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _contract_golden as golden  # noqa: E402

from compressdet.models import build_model, is_detector, load_model, save_model  # noqa: E402
from compressdet.models.contract import TapInfo  # noqa: E402

torch.set_num_threads(1)
GOLD = json.loads(golden.GOLDEN.read_text())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("shuffledet_0.25x", image_size=golden.HW).eval()


def test_shuffledet_is_a_detector(model):
    assert is_detector(model) and model.family == "shuffledet" and model.export_outputs == ("head",)
    assert model.feature_taps() == [TapInfo("backbone", 192, 16)]
    assert model.priors().shape == (4 * 12 * 9, 4)


def test_contract_members_equal_the_pre_contract_numbers(model):
    g = GOLD["model"]
    x, targets = golden.fixed_batch()
    with torch.no_grad():
        out, feat = model.forward_with_features(x)
    assert float(out.double().sum()) == pytest.approx(g["out_sum"], rel=1e-6)
    assert float(feat.double().sum()) == pytest.approx(g["feat_sum"], rel=1e-6)
    loss = model.loss(out, targets)
    assert {k: pytest.approx(v, rel=1e-6) for k, v in g["loss"].items()} == {k: float(v) for k, v in loss.items()}
    dets = model.postprocessor({"score_thresh": 0.0})(out, [t["orig_size"] for t in targets])
    for d, gd in zip(dets, g["dets"], strict=True):
        assert len(d["boxes"]) == gd["n"] and int(d["labels"].sum()) == gd["labels"]
        assert float(d["boxes"].double().sum()) == pytest.approx(gd["boxes"], rel=1e-6)
        assert float(d["scores"].double().sum()) == pytest.approx(gd["scores"], rel=1e-6)
    (mask,) = model.distill_mask([t["boxes"] for t in targets], [tuple(feat.shape[-2:])], psi=0.5)
    assert mask.nonzero().tolist() == g["mask"]


def test_trainer_distillation_through_the_contract_is_unchanged(tmp_path):
    res = golden.trainer_numbers(tmp_path)
    g = GOLD["trainer"]
    assert res["final_losses"] == {k: pytest.approx(v, rel=1e-5) for k, v in g["final_losses"].items()}
    # recorded on an AVX-512 CPU; torch picks other float kernels per CPU capability (an AVX2 EPYC lands
    # 1.4e-7 away after 3 steps), so the sum is held to 1e-6, still far below what a changed loss moves
    assert res["param_sum"] == pytest.approx(g["param_sum"], rel=1e-6)


def test_exported_graph_is_unchanged(tmp_path):
    assert golden.onnx_numbers(tmp_path) == GOLD["onnx"]  # graph without value names (see graph_digest)


def test_load_model_dispatches_on_the_stored_name(tmp_path, model):
    from compressdet.models import ModelError

    p = save_model(model, tmp_path / "m.pt")
    m2, _ = load_model(p)
    assert type(m2).__name__ == "ShuffleDet" and m2.arch == model.arch
    obj = torch.load(p, weights_only=True)
    obj["arch"]["name"] = "nosuchnet_1x"
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="unknown model 'nosuchnet_1x'"):
        load_model(tmp_path / "bad.pt")
    # base=: load into a given instance instead of the registry's
    m3, _ = load_model(p, base=build_model("shuffledet_0.25x", image_size=golden.HW))
    assert all(torch.equal(a, b) for a, b in zip(m3.state_dict().values(), model.state_dict().values()))
