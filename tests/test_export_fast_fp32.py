"""The fp32 export's exact rewrites: same function as the model, faster kernels for ORT."""

from __future__ import annotations

import onnx
import pytest
import torch

from compressdet.export._onnx import export_onnx, synthetic_image
from compressdet.export.fast_fp32 import DEFAULT_FP32_REWRITES, fast_fp32, resolve_rewrites
from compressdet.export.runtime import ort_run, ort_session
from compressdet.models import build_model

HW = (64, 192)


@pytest.mark.parametrize("rewrites", [True, {"pad_bottleneck": 16, "pool_as_conv": True, "pad_stem": 4}])
def test_rewritten_fp32_graph_is_exact(tmp_path, rewrites):
    torch.manual_seed(0)
    model = build_model("shuffledet_0.25x", image_size=HW).eval()
    x = synthetic_image(HW)
    info = export_onnx(model, tmp_path / "m.onnx", image_size=HW, fp32_rewrites=rewrites, log=lambda *_: None)
    assert info["fp32_rewrites"] == resolve_rewrites(rewrites)
    with torch.no_grad():
        ref = model(x).numpy()
    out = ort_run(ort_session(tmp_path / "m.onnx"), x.numpy())[0]
    assert abs(out - ref).max() <= 1e-4 * max(1.0, abs(ref).max())
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "fold_shuffle" in meta["fp32_rewrites"]


def test_default_graph_has_no_shuffle_and_aligned_depthwise_widths(tmp_path):
    model = build_model("shuffledet_0.25x", image_size=HW).eval()
    export_onnx(model, tmp_path / "fast.onnx", image_size=HW, log=lambda *_: None)
    export_onnx(model, tmp_path / "plain.onnx", image_size=HW, fp32_rewrites=False, log=lambda *_: None)
    fast, plain = (onnx.load(str(tmp_path / f"{n}.onnx")).graph for n in ("fast", "plain"))
    assert sum(n.op_type == "Transpose" for n in plain.node) > 0  # the channel shuffles
    assert sum(n.op_type == "Transpose" for n in fast.node) == 0
    inits = {i.name: i for i in fast.initializer}
    dw = [n for n in fast.node if n.op_type == "Conv"
          and any(a.name == "group" and a.i > 1 and a.i == inits[n.input[1]].dims[0] for a in n.attribute)]
    assert dw and all(inits[n.input[1]].dims[0] % DEFAULT_FP32_REWRITES["pad_bottleneck"] == 0 for n in dw)


def test_other_models_and_bad_settings():
    m = torch.nn.Conv2d(3, 3, 1)
    assert fast_fp32(m) == (m, None)
    with pytest.raises(ValueError, match="unknown fp32 rewrite"):
        resolve_rewrites({"fold": True})
