"""Paired statistics for claims that compare arms over seeds (the project's evidence protocol).

Arms are paired by seed (same initialisation and batch order), so the claim is about the
per-seed differences: their mean and a two-sided Student-t confidence interval with n-1 degrees
of freedom. With three seeds the interval is wide on purpose: a difference is called
significant only when the interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["mean_ci", "paired_difference", "describe"]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, list[float]]:
    """(mean, [low, high]) of ``values`` with a t interval (n-1 df); one value gives [nan, nan]."""
    from scipy import stats

    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci: no values")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, [math.nan, math.nan]
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return m, [m - half, m + half]


def paired_difference(a: Mapping[int, float] | Sequence[float], b: Mapping[int, float] | Sequence[float], *,
                      seeds: Sequence[int] | None = None, level: float = 0.95) -> dict:
    """``a - b`` per seed, its mean and CI: ``{"per_seed", "seeds", "mean", "ci95", "significant"}``.

    ``a``/``b`` are ``{seed: value}`` (only seeds present in both are paired; ``seeds`` picks and
    orders them) or equal-length sequences in seed order.

    Raises:
        ValueError: sequences of different length, or no common seed.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        common = [s for s in (seeds if seeds is not None else sorted(a)) if s in a and s in b]
        diffs, used = [float(a[s]) - float(b[s]) for s in common], list(common)
    else:
        if len(a) != len(b):
            raise ValueError(f"paired_difference: {len(a)} values against {len(b)}: arms must share seeds")
        diffs = [float(x) - float(y) for x, y in zip(a, b)]
        used = list(seeds) if seeds is not None else list(range(len(diffs)))
    if not diffs:
        raise ValueError("paired_difference: no seed in common")
    m, ci = mean_ci(diffs, level)
    sig = bool(len(diffs) > 1 and (ci[0] > 0 or ci[1] < 0))
    return {"per_seed": diffs, "seeds": used, "mean": m, "ci95": ci, "significant": sig}


def describe(d: Mapping, unit: str = "mAP") -> str:
    """One line for reports: ``+1.23 mAP (95% CI [+0.10, +2.36], per seed +1.0, +1.5, +1.2)``,
    ending in "not significant" when the interval holds 0."""
    per = ", ".join(f"{v:+.2f}" for v in d["per_seed"])
    lo, hi = d["ci95"]
    ci = "n/a (one seed)" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"
    return (f"{d['mean']:+.2f} {unit} (95% CI {ci}, per seed {per})"
            + ("" if d.get("significant") else ": not significant"))
