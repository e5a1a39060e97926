"""Paired statistics: t interval against textbook values, pairing by seed, the verdict."""

import math

import pytest

from compressdet.eval.stats import describe, mean_ci, paired_difference


def test_mean_ci_matches_t_table():
    # n=3, sd=1: half width t(0.975, 2)=4.302653 / sqrt(3)
    m, (lo, hi) = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert m - lo == pytest.approx(hi - m)
    assert all(math.isnan(x) for x in mean_ci([5.0])[1])


def test_paired_difference_pairs_by_seed_and_judges():
    a, b = {0: 10.0, 1: 11.0, 2: 12.5, 7: 99.0}, {0: 9.0, 1: 10.0, 2: 11.0}
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2] and d["per_seed"] == [1.0, 1.0, 1.5]
    assert d["significant"] and d["ci95"][0] > 0
    noisy = paired_difference([1.0, -2.0, 2.0], [0.0, 0.0, 0.0])
    assert not noisy["significant"] and noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert describe(noisy).endswith("not significant")
    assert "not significant" not in describe(d)
    with pytest.raises(ValueError, match="share seeds"):
        paired_difference([1.0, 2.0], [1.0])
