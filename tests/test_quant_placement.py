"""``quant.quantizer`` (x86 | openvino placement) and ``quant.reduce_range`` (7-bit activations where the CPU's
u8*s8 int8 kernels saturate): settings, the choice by CPU flags, and INT8 numerics against PyTorch."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("torchao")
ort = pytest.importorskip("onnxruntime")
import torch  # noqa: E402

from compressdet import _cpu  # noqa: E402
from compressdet.errors import MissingDependencyError, RecipeError, UserError  # noqa: E402
from compressdet.models import build_model  # noqa: E402
from compressdet.quant._pt2e import make_quantizer, resolve_reduce_range  # noqa: E402
from compressdet.quant.onnx_int8 import check_int8_graph, export_int8_onnx  # noqa: E402
from compressdet.quant.ptq import quantize_ptq, randomize_batchnorm  # noqa: E402
from compressdet.recipe import QuantConfig, parse_recipe  # noqa: E402

SIZE = (64, 192)
#: the tolerance of tests/test_quant.py's ORT-vs-PyTorch checks (why: see there)
MEAN_TOL, MAX_TOL = 0.10, 0.10

RECIPE = """name: q
data: {{format: synth, image_size: [64, 192]}}
stages:
  - {{name: s, kind: train, model: shuffledet_0.25x}}
  - name: p
    kind: ptq
    from: s
    quant: {quant}
"""


def _parse(quant: str):
    return parse_recipe(RECIPE.format(quant=quant), source="r.yaml")


@pytest.mark.parametrize("quant,field", [
    ("{quantizer: tflite}", "quant.quantizer"),
    ("{reduce_range: maybe}", "quant.reduce_range"),
    ("{quantizer: openvino, float_stem: true}", "float_stem"),
    ("{quantizer: openvino, activations: s8_symmetric}", "activations"),
    ("{reduce_range: true, activations: s8_symmetric}", "reduce_range"),
])
def test_bad_settings_name_the_field(quant, field):
    with pytest.raises(RecipeError) as e:
        _parse(quant)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("r.yaml:") and field in msg


def test_settings_default_and_parse():
    q = _parse("{quantizer: openvino, reduce_range: false, calibration_images: 4}").stages[1].quant
    assert (q.quantizer, q.reduce_range) == ("openvino", False)
    d = QuantConfig()
    assert (d.quantizer, d.reduce_range) == ("x86", "auto")
    # a run's saved recipe.yaml spells every field out: the x86 settings at their defaults are not refused
    spelled = ", ".join(f"{k}: {str(v).lower()}" for k, v in QuantConfig(quantizer="openvino").model_dump().items())
    assert _parse("{" + spelled + "}").stages[1].quant.quantizer == "openvino"


@pytest.mark.parametrize("dot,cfg,want", [
    (False, {}, True), (True, {}, False),  # auto: by the CPU's flags
    (False, {"activations": "s8_symmetric"}, False),  # TensorRT's int8 graph: never narrowed by auto
    (True, {"reduce_range": True}, True), (False, {"reduce_range": False}, False),  # explicit wins
    (False, {"quantizer": "openvino"}, True)])
def test_reduce_range_auto_picks_by_cpu(monkeypatch, dot, cfg, want):
    monkeypatch.setattr(_cpu, "int8_dot_product", lambda: dot)
    assert resolve_reduce_range(QuantConfig(**cfg)) is want


def _act_ranges(prepared) -> set[tuple[int, int]]:
    """``(quant_min, quant_max)`` of every activation observer of a prepared graph (weights: per channel)."""
    return {(m.quant_min, m.quant_max) for n, m in prepared.named_modules()
            if hasattr(m, "quant_min") and "PerChannel" not in type(m).__name__ and n}


def test_reduce_range_narrows_the_x86_activations(monkeypatch):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from compressdet.quant._pt2e import capture

    model = build_model("shuffledet_0.25x", image_size=SIZE).eval()
    gm = capture(model, torch.zeros(1, 3, *SIZE), train=False)
    for rr, want in ((True, {(0, 127)}), (False, {(0, 255)})):
        import copy

        prepared = prepare_pt2e(copy.deepcopy(gm), make_quantizer(QuantConfig(reduce_range=rr), is_qat=False))
        assert _act_ranges(prepared) == want


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return randomize_batchnorm(build_model("shuffledet_0.25x", image_size=SIZE), head_std=0.02).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed)) * 50


def _close(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    d = np.abs(got - ref)
    return float(d.mean() / np.abs(ref).mean()), float(d.max() / np.abs(ref).max())


def test_ort_int8_matches_torch_with_reduce_range(student, tmp_path):
    """The check tests/test_quant.py skips on CPUs without VNNI/AMX runs everywhere with 7-bit activations:
    ORT's fused int8 kernels (all optimisations on) then agree with the PyTorch int8 program."""
    cfg = QuantConfig(calibration_images=4, reduce_range=True)
    prog = quantize_ptq(student, iter([_images(2, seed=5), _images(2, seed=6)]), cfg, observer="minmax")
    x = _images(1, seed=9)
    path = export_int8_onnx(prog, x, tmp_path / "rr.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = prog(x)[0].numpy()
    mean, worst = _close(got, ref)
    assert mean <= MEAN_TOL and worst <= MAX_TOL, (mean, worst)


def _ov_conv_precisions(path) -> dict[str, int]:
    """How many convolutions OpenVINO's CPU plugin runs in each precision (read back from the runtime)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    out: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) == "Convolution":
            p = str(info["runtimePrecision"].astype(str))
            out[p] = out.get(p, 0) + 1
    return out


def test_openvino_placement_ptq_runs_int8_in_openvino(student, tmp_path):
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    cfg = QuantConfig(quantizer="openvino", calibration_images=4)
    prog = quantize_ptq(student, iter([_images(2, seed=5), _images(2, seed=6)]), cfg, observer="minmax")
    x = _images(1, seed=9)
    path = export_int8_onnx(prog, x, tmp_path / "ov.onnx", ort_rewrites=False)
    info = check_int8_graph(path)
    assert info["float_convs"] == 0 and info["int8_convs"] >= 40, info
    prec = _ov_conv_precisions(path)
    assert sum(v for k, v in prec.items() if k in ("u8", "i8")) >= 40 and prec.get("f32", 0) == 0, prec
    got = ov.Core().compile_model(str(path), "CPU")(x.numpy())[0]
    with torch.no_grad():
        ref = prog(x)[0].numpy()
        flt = student(x).numpy()
    mean, worst = _close(got, ref)
    assert mean <= MEAN_TOL and worst <= MAX_TOL, (mean, worst)
    assert _close(ref, flt)[1] < 0.25  # and the int8 program is still the float model, approximately


def test_openvino_placement_qat_converts_and_exports(student, tmp_path):
    pytest.importorskip("nncf")
    from compressdet.quant import convert
    from compressdet.quant.qat import prepare_qat

    x = _images(2, seed=1)
    prepared = prepare_qat(student, x, QuantConfig(quantizer="openvino"))
    fqs = [m for m in prepared.modules() if type(m).__name__.endswith("FakeQuantize")]
    assert len(fqs) >= 80  # weights and activations fake-quantized
    prepared(x)[0].sum().backward()  # trains
    converted = convert(prepared)
    path = export_int8_onnx(converted, x[:1], tmp_path / "qat_ov.onnx", ort_rewrites=False)
    assert check_int8_graph(path)["float_convs"] == 0
    assert sum(v for k, v in _ov_conv_precisions(path).items() if k in ("u8", "i8")) >= 40


def test_openvino_placement_without_nncf_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    with pytest.raises(MissingDependencyError) as e:
        make_quantizer(QuantConfig(quantizer="openvino"), is_qat=False)
    msg = str(e.value)
    assert "quant.quantizer: openvino" in msg and "pip install compressdet[openvino]" in msg and "\n" not in msg


def test_openvino_placement_refuses_fpn_families():
    with pytest.raises(UserError, match="quant.quantizer: openvino supports the shuffledet family"):
        make_quantizer(QuantConfig(quantizer="openvino"), is_qat=False, family="fcos")


def test_deploy_labels_the_qdq_candidate_with_its_placement():
    from types import SimpleNamespace

    from compressdet.deploy.runner import _placement

    ov = SimpleNamespace(kind="ptq", meta={"quant": {"quantizer": "openvino"}, "quantizer": "openvino",
                                           "reduce_range": True})
    assert _placement(ov) == "ptq, openvino placement, 7-bit activations"
    old = SimpleNamespace(kind="qat", meta={"quant": {"backend": "x86"}})  # a run from before the setting
    assert _placement(old) == "qat, x86 placement"


STAGE_RECIPE = """name: tiny_ov
seed: 0
data:
  format: synth
  image_size: [64, 192]
  synth: {{num_images: 8, size: [248, 75], seed: 0, cache_dir: {cache}}}
  augment: {{enabled: false}}
  max_val_images: 2
stages:
  - name: student
    kind: train
    model: shuffledet_0.25x
    schedule: {{steps: 1, batch_size: 2, eval_every: 1, checkpoint_every: 1, log_every: 1}}
    eval: {{batch_size: 2}}
  - name: ptq
    kind: ptq
    from: student
    method: minmax
    quant: {{quantizer: openvino, calibration_images: 2}}
    eval: {{batch_size: 2}}
"""


def test_ptq_stage_with_openvino_placement_records_it(tmp_path, monkeypatch):
    """The stage's metrics, meta and graph metadata say which placement and whether 7-bit; the graph is
    checked in OpenVINO (its runtime) besides ONNX Runtime."""
    pytest.importorskip("nncf")
    import json

    import onnx

    from compressdet.pipeline import Pipeline

    monkeypatch.setattr(_cpu, "int8_dot_product", lambda: False)  # the same choice on every CPU
    recipe = parse_recipe(STAGE_RECIPE.format(cache=tmp_path / "synth"), source="tiny.yaml")
    run = Pipeline(recipe, tmp_path / "run").run()
    rec = json.loads((run / "manifest.json").read_text())["stages"]["ptq"]
    assert rec["status"] == "done", rec.get("error")
    m = rec["metrics"]
    assert (m["quantizer"], m["reduce_range"]) == ("openvino", True)
    assert (rec["meta"]["quantizer"], rec["meta"]["reduce_range"]) == ("openvino", True)
    assert 0.0 <= m["openvino_primary"] <= 100.0 and "openvino_vs_torch_primary" in m
    assert m["graph"]["float_convs"] == 0
    props = {p.key: p.value for p in onnx.load(str(run / rec["artifacts"]["onnx_int8"]["path"])).metadata_props}
    assert (props["quantizer"], props["reduce_range"]) == ("openvino", "true")


def test_benchmark_recipe_has_one_ptq_stage_per_arm(tmp_path):
    """benchmarks/quant_placement.py's recipe: the shipped student, then x86 / openvino x 8-bit / 7-bit PTQ."""
    from _bench import load_bench, unload_bench

    qp = load_bench("quant_placement")
    try:
        rec = parse_recipe(qp.recipe(qp.PRESETS["cpu"], tmp_path), source="qp.yaml")
        assert [s.kind for s in rec.stages] == ["model_file"] + ["ptq"] * 4
        got = {s.name: (s.quant.quantizer, s.quant.reduce_range, s.quant.calibration_images) for s in rec.stages[1:]}
        assert got == {n: (q, rr, 32) for n, (q, rr) in qp.ARMS.items()}
        assert tuple(rec.data.image_size) == (192, 624) and rec.stages[0].path == qp.ASSET
    finally:
        unload_bench("quant_placement")
