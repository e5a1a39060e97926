"""Issue #42 (train faster on the CPU): the optimised training step keeps its numerics, CPU bf16 autocast
stays near fp32, ``schedule.amp`` is validated, and the speed benchmark's smoke preset writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from compressdet.recipe import ScheduleConfig

HW = (64, 192)
GOLDEN = Path(__file__).parent / "data" / "train_speed_golden.json"
ARCHS = ["shuffledet_0.25x", "fcos_mnv2_050"]


class FixedBoxes(Dataset):
    """The same deterministic batch every step: noise images with a few boxes (two overlap, so the
    anchor assignment sees a contested anchor)."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def __len__(self) -> int:
        return 2

    def __getitem__(self, key):
        i, _ = key if isinstance(key, tuple) else (key, 0)
        g = torch.Generator().manual_seed(i)
        img = (torch.randn(3, *HW, generator=g) * 50).to(self.dtype)
        boxes = torch.tensor([[10.0, 8.0, 60.0, 40.0], [12.0, 9.0, 61.0, 41.0], [100.0, 20.0, 130.0, 60.0],
                              [150.0 - 10 * i, 30.0, 170.0, 50.0]])
        return img, {"boxes": boxes, "labels": torch.tensor([0, 0, 1, 2]), "image_id": f"{i:06d}", "orig_size": HW}


def run_steps(arch: str, tmp_path: Path, *, steps: int = 3, dtype: torch.dtype = torch.float64, **schedule) -> dict:
    """Losses per step and the parameters after ``steps`` steps of the Trainer on the fixed batch."""
    from compressdet.data import build_loader
    from compressdet.engine import Trainer
    from compressdet.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, image_size=HW).to(dtype)
    loader = build_loader(FixedBoxes(dtype), batch_size=2, train=True, seed=0)
    sched = ScheduleConfig(steps=steps, batch_size=2, lr=0.01, eval_every=10_000, checkpoint_every=10_000,
                           log_every=10_000, **schedule)
    losses: list[dict] = []
    trainer = Trainer(model, schedule=sched, loss_fn=model.build_loss(), train_loader=loader, out_dir=tmp_path,
                      seed=0, on_step=lambda t: losses.append(t.loss_values()))
    trainer.fit()
    params = {k: v.detach().double() for k, v in model.state_dict().items() if v.is_floating_point()}
    return {"losses": losses, "params": params}


def _summary(res: dict) -> dict:
    """What the golden file keeps: every loss, and per parameter its sum and sum of squares (float64)."""
    return {"losses": res["losses"],
            "params": {k: [float(v.sum()), float((v * v).sum())] for k, v in res["params"].items()}}


@pytest.mark.parametrize("arch", ARCHS)
def test_optimised_step_matches_recorded_numerics(arch, tmp_path):
    """3 float64 steps on a fixed batch give the losses and parameters recorded before the step was optimised."""
    torch.set_num_threads(1)
    got = _summary(run_steps(arch, tmp_path))
    want = json.loads(GOLDEN.read_text())[arch]
    assert len(got["losses"]) == len(want["losses"]) == 3
    for g, w in zip(got["losses"], want["losses"]):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-9), k
    assert got["params"].keys() == want["params"].keys()
    for k, (s, sq) in want["params"].items():
        assert got["params"][k][0] == pytest.approx(s, rel=1e-6, abs=1e-9), k
        assert got["params"][k][1] == pytest.approx(sq, rel=1e-6, abs=1e-9), k



def _legacy_assign():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from train_speed import _legacy_assign_anchors

    return _legacy_assign_anchors


def test_vectorised_anchor_assignment_matches_the_sequential_rule():
    """The fast path (every GT's best anchor overlaps it and is its own) and the fallback (contested or
    non-overlapping best anchors) give the per-GT loop's anchors exactly, on random scenes and on ties."""
    from torchvision.ops import box_convert, box_iou

    from compressdet.losses.detection import assign_anchors
    from compressdet.models.anchors import generate_anchors

    legacy = _legacy_assign()
    anchors = generate_anchors(HW)
    g = torch.Generator().manual_seed(0)
    fast = 0
    for n in [0, 1, 2, 5, 12, 30]:
        for _ in range(20):
            xy = torch.rand(n, 2, generator=g) * torch.tensor([HW[1] - 8.0, HW[0] - 8.0])
            wh = torch.rand(n, 2, generator=g) * torch.tensor([80.0, 50.0]) + 2
            boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([HW[1], HW[0]]))], 1)
            got, want = assign_anchors(boxes, anchors), legacy(boxes, anchors)
            assert torch.equal(got, want), (n, boxes)
            assert got.unique().numel() == n
            if n:
                top, first = box_iou(boxes, box_convert(anchors, "cxcywh", "xyxy")).max(1)
                fast += int(bool((top > 0).all()) and first.unique().numel() == n)
    assert 10 < fast < 100  # both paths ran
    same = torch.tensor([[10.0, 8.0, 60.0, 40.0]] * 3)  # identical boxes: one best anchor, contested
    assert torch.equal(assign_anchors(same, anchors), legacy(same, anchors))
    outside = torch.tensor([[-50.0, -50.0, -40.0, -40.0], [10.0, 8.0, 60.0, 40.0]])  # no overlap: nearest anchor
    assert torch.equal(assign_anchors(outside, anchors), legacy(outside, anchors))


def test_per_tensor_clip_scales_each_gradient_as_before():
    """Stacked scales (the #42 clip) equal the per-tensor loop's, including an fp64 tensor beside fp32 ones."""
    from compressdet.engine import clip_grad_norm_per_tensor

    g = torch.Generator().manual_seed(1)
    for dtypes in ([torch.float32] * 3, [torch.float32, torch.float64, torch.float32]):
        params = [torch.nn.Parameter(torch.zeros(4, 3, dtype=d)) for d in dtypes]
        for i, p in enumerate(params):
            p.grad = (torch.randn(4, 3, generator=g) * (0.1 if i == 1 else 5.0)).to(p.dtype)
        want = [p.grad * torch.clamp(0.5 / (p.grad.norm() + 1e-6), max=1.0) for p in params]
        clip_grad_norm_per_tensor(params, 0.5)
        for p, w in zip(params, want):
            assert torch.equal(p.grad, w)
        assert params[1].grad.norm() < 0.5 < 5.0  # the small one is left alone, the others scaled to 0.5
        assert float(params[0].grad.norm()) == pytest.approx(0.5, rel=1e-5)


# ---------------------------------------------------------------------------------------------- amp
@pytest.mark.parametrize("value, expect", [("auto", "auto"), (True, True), (False, False), ("bf16", "bf16")])
def test_amp_setting_values(value, expect):
    assert ScheduleConfig(amp=value).amp == expect
    assert ScheduleConfig().amp == "auto"


@pytest.mark.parametrize("value", ["fp16", "bfloat16", 2, "cpu", None])
def test_amp_setting_refuses_other_values(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        ScheduleConfig(amp=value)
    assert "amp" in str(e.value) and "expected auto, true, false or bf16" in str(e.value)


def test_amp_setting_in_a_recipe_names_the_field(tmp_path):
    """A recipe with amp: fp16 is refused in one line naming the field and the values allowed."""
    from compressdet.errors import RecipeError
    from compressdet.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndata: {format: synth, image_size: [64, 192]}\nstages:\n  - name: s\n    kind: train\n"
                    "    model: shuffledet_0.25x\n    schedule: {steps: 2, amp: fp16}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}:7: stages[0].schedule.amp: expected auto, true, false or bf16 (got 'fp16')"


@pytest.mark.parametrize("amp, device, cuda_bf16, expect", [
    ("auto", "cpu", False, None), (True, "cpu", False, None), (False, "cpu", False, None),
    ("bf16", "cpu", False, torch.bfloat16),
    ("auto", "cuda", True, torch.bfloat16), ("auto", "cuda", False, torch.float16), (True, "cuda", False, torch.float16),
    ("bf16", "cuda", False, torch.bfloat16), (False, "cuda", True, None)])
def test_amp_dtype(monkeypatch, amp, device, cuda_bf16, expect):
    """CUDA keeps its behaviour (auto/true: bf16 where the GPU has it, else fp16); a CPU gets bf16 only when asked."""
    from compressdet import _cpu
    from compressdet.engine import trainer

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(_cpu, "bf16_native", lambda: True)
    assert trainer.amp_dtype(amp, torch.device(device)) == expect


def test_cpu_bf16_without_native_support_warns_once(monkeypatch):
    import warnings

    from compressdet import _cpu
    from compressdet.engine import trainer

    monkeypatch.setattr(trainer, "_warned_bf16_slow", False)
    monkeypatch.setattr(_cpu, "bf16_native", lambda: False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            assert trainer.amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
        assert trainer.amp_dtype("auto", torch.device("cpu")) is None
    msgs = [str(x.message) for x in w if "bf16" in str(x.message)]
    assert len(msgs) == 1 and "AVX512-BF16" in msgs[0] and "slower" in msgs[0]
    monkeypatch.setattr(trainer, "_warned_bf16_slow", False)
    monkeypatch.setattr(_cpu, "bf16_native", lambda: True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        trainer.amp_dtype("bf16", torch.device("cpu"))
    assert not [x for x in w if "bf16" in str(x.message)]


@pytest.mark.parametrize("flags, machine, expect", [
    ({"avx2", "fma"}, "x86_64", False),           # this AVX2-only EPYC
    ({"avx512f", "avx512_bf16"}, "x86_64", True),  # Zen 4, Cooper Lake
    ({"avx512f", "amx_bf16", "amx_tile"}, "x86_64", True),  # Sapphire Rapids
    (set(), "x86_64", True),                       # no /proc/cpuinfo: no warning on a guess
    ({"asimd"}, "aarch64", True)])
def test_bf16_native(monkeypatch, flags, machine, expect):
    import platform

    from compressdet import _cpu

    monkeypatch.setattr(_cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert _cpu.bf16_native() is expect


def test_cpu_bf16_autocast_loss_curve_stays_near_fp32(tmp_path, recwarn):
    """10 steps on a fixed batch: with CPU bf16 autocast every step's total loss is within 5% of fp32's,
    and the model really ran in bf16 (the curves are not identical)."""
    torch.set_num_threads(1)
    fp32 = run_steps("shuffledet_0.25x", tmp_path / "a", steps=10, dtype=torch.float32, amp=False)
    bf16 = run_steps("shuffledet_0.25x", tmp_path / "b", steps=10, dtype=torch.float32, amp="bf16")
    a = [x["total"] for x in fp32["losses"]]
    b = [x["total"] for x in bf16["losses"]]
    assert a[-1] < a[0] and b[-1] < b[0]  # both learn
    for i, (x, y) in enumerate(zip(a, b)):
        assert y == pytest.approx(x, rel=0.05), f"step {i + 1}: bf16 {y} vs fp32 {x}"
    assert a != b



# ---------------------------------------------------------------------------------------------- benchmark
def test_benchmark_smoke_preset_writes_its_json(tmp_path, monkeypatch):
    """``benchmarks/train_speed.py --preset smoke`` times every variant through the real Trainer and writes
    train_speed.json: img/s per variant, a split whose parts add up to the step, before/after per model."""
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("train_speed", None)
    import train_speed

    assert train_speed.main(["--preset", "smoke", "--results", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "train_speed.json").read_text())
    assert res["preset"] == "smoke" and res["image_size"] == [64, 192] and isinstance(res["bf16_native"], bool)
    assert "indicative" in res["note"]
    m = res["models"]["shuffledet_0.25x"]
    run = [k for k in train_speed.VARIANTS if k not in train_speed.OPT_IN]
    assert set(run) == {"before", "after", "channels_last", "bf16"} and "compile" not in m  # opt-in only
    for name in run:
        v = m[name]
        assert v["img_per_s"] > 0 and len(v["img_per_s_rounds"]) == 2
        assert set(v["split_ms"]) == set(train_speed.PARTS)
        assert v["split_ms"]["forward"] > 0 and v["split_ms"]["backward"] > 0 and v["split_ms"]["data"] > 0
        assert sum(v["split_ms"].values()) == pytest.approx(v["step_ms"], rel=0.02)
        assert v["checkpoint_ms"] > 0
    assert m["speedup_after_vs_before"] == pytest.approx(m["after"]["img_per_s"] / m["before"]["img_per_s"], rel=1e-2)
    assert m["fastest"] in train_speed.VARIANTS and m["fastest"] != "before"
    assert train_speed.assign_anchors_is_restored()


if __name__ == "__main__":  # records the golden file (run once, on the code before the step was optimised)
    import tempfile

    torch.set_num_threads(1)
    out = {}
    for a in ARCHS:
        with tempfile.TemporaryDirectory() as d:
            out[a] = _summary(run_steps(a, Path(d)))
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
