"""The imitation benchmark's own logic: step planning within budgets, the exact teacher-feature
cache, and the seed-table columns (the runs themselves are benchmarks, not tests)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "imitation_gain.py"


@pytest.fixture(scope="module")
def ig():
    spec = importlib.util.spec_from_file_location("imitation_gain_bench", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


SPEEDS = {"input_s_teacher": 0.005, "input_s_student": 0.002, "teacher_fwd_s_per_img": 0.05,
          "eval_s_per_img_1x": 0.05, "eval_s_per_img_0.25x": 0.025, "teacher_step_s": 0.45,
          "student_step_s": 0.19, "imitation_step_s": 0.23}


def test_plan_fits_budgets_and_scales(ig):
    p = copy.deepcopy(ig.PRESETS["cpu"])
    kw = dict(n_train=3712, n_eval=1000)
    small = ig.plan_steps(p, SPEEDS, teacher_minutes=30, student_minutes=45, **kw)
    big = ig.plan_steps(p, SPEEDS, teacher_minutes=60, student_minutes=90, **kw)
    for plan, (tm, sm) in ((small, (30, 45)), (big, (60, 90))):
        assert not plan["budget_too_small"]
        assert plan["estimated_minutes"]["teacher_s"] <= tm and plan["estimated_minutes"]["students_s"] <= sm
        assert plan["runs"] == 11  # 3 baselines + sweep of 3 + 2 more imitating seeds + 3 controls
    assert big["teacher_steps"] > 1.9 * small["teacher_steps"]
    assert big["student_steps"] > 1.9 * small["student_steps"]
    # a slower teacher step buys fewer teacher steps, the students' plan is untouched
    slow = ig.plan_steps(p, {**SPEEDS, "teacher_step_s": 0.9}, teacher_minutes=60, student_minutes=90, **kw)
    assert slow["teacher_steps"] < big["teacher_steps"] and slow["student_steps"] == big["student_steps"]


def test_plan_flags_budget_below_fixed_costs(ig):
    plan = ig.plan_steps(ig.PRESETS["cpu"], SPEEDS, teacher_minutes=0.1, student_minutes=0.1,
                         n_train=3712, n_eval=1000)
    assert plan["budget_too_small"] and plan["teacher_steps"] == 2 and plan["student_steps"] == 2


def test_feature_store_exact_and_bounded(ig, tmp_path):
    store = ig.FeatureStore(tmp_path, "t", capacity=2)
    a, b, c = (np.full((4, 2, 3), v, np.float32) for v in (1.5, -2.0, 7.0))
    assert store.get(b"a") is None
    store.put(b"a", a)
    store.put(b"b", b)
    store.put(b"c", c)  # over capacity: not stored
    assert np.array_equal(store.get(b"a"), a) and np.array_equal(store.get(b"b"), b)
    assert store.get(b"c") is None
    assert (store.hits, store.misses) == (2, 2)
    store.close()
    assert not (tmp_path / "t.f32").exists()


def test_cached_teacher_serves_identical_inputs_only(ig, tmp_path):
    from compressdet.models import build_model

    torch.manual_seed(0)
    teacher = build_model("shuffledet_1x", image_size=(32, 64)).eval()
    x = torch.randn(2, 3, 32, 64)
    assert ig.check_feature_cache(teacher, x) < 1e-4
    store = ig.FeatureStore(tmp_path, "t", capacity=4)
    cached = ig._cached_teacher_cls()(teacher, store)
    cached.forward_with_features(x)
    y = x.clone()
    y[0, 0, 0, 0] += 1.0  # one changed pixel must not hit
    cached.forward_with_features(y)
    assert (store.hits, store.misses) == (1, 3)
    store.close()


def test_table_columns_match_method_macs(ig):
    flops, params = ig._flops_params((384, 1248))
    assert flops == {"1x": "5.238 G", "0.25x": "0.667 G"}  # METHOD.md section 6, analytic
    assert params == {"1x": "1.6291 M", "0.25x": "0.2095 M"}
    assert ig._flops_params((192, 624))[0]["1x"] == "1.309 G"  # MACs scale with the pixels
