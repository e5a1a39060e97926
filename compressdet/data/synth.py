"""SynthKITTI: a synthetic data set in the KITTI layout, the embedded default of every demo and test.

Layouts are real, pixels are synthetic. Each image takes the object list of one real KITTI label
file (``layouts=``) scaled to the output size, or, without one, a layout drawn by a sampler whose
constants (:data:`LAYOUT_STATS`) were fitted to all 7,481 KITTI training label files. Objects are
rendered far to near (by box bottom) with a parametric look per KITTI type over a procedural road
scene, so occlusion and border truncation are real, and the labels are measured from what was
drawn: the box is the drawn silhouette's extent (clipped to the image), ``truncated`` the
fraction of its silhouette outside the image, ``occluded`` 0/1/2 from the fraction hidden by
nearer objects. An object with under 10% visible is written as ``DontCare`` (its pixels are
there but nobody could label it); one with no visible pixel is dropped.

Example:
    >>> root = generate_synth(Path("synth"), SynthConfig(num_images=20, size=(624, 192)))
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, UserError
from ..recipe import SynthConfig
from .kitti import KittiObject, format_label_line, parse_label_lines

__all__ = ["SYNTH_TYPES", "LAYOUT_STATS", "SYNTH_VERSION", "fit_layout_stats", "sample_layout", "load_layouts",
           "render_image", "generate_synth", "layout_pools", "split_counts", "ensure_synth", "synth_key",
           "synth_cache_dir", "Placed"]

#: bump when the renderer or label rules change: it is part of the cache key
SYNTH_VERSION = 2  # 2: train / val / test with disjoint layout pools and RNG streams
SYNTH_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
REF_SIZE = (1242, 375)  # W, H the real layouts and LAYOUT_STATS refer to

# Measured with ``fit_layout_stats("../shared/kitti_real/training/label_2_all")`` (all 7,481 KITTI
# training label files, 40,570 non-DontCare objects). Geometry per type is fitted on untruncated
# boxes (truncated < 0.05) whose bottom is inside the frame (y2 < 370): height ~ k * (y2 - y0) with
# a log-normal residual (h_logstd), log(w/h) ~ N(asp_mean, asp_std), y2 ~ N(y2_mean, y2_std).
# tests/test_data_synth.py re-fits from ../shared when present and checks these still agree.
LAYOUT_STATS = {
    "objects_per_image": (5.423, 3.738),  # mean, std of non-DontCare objects per file (min 1)
    "truncated_rate": 0.133,  # fraction of objects with truncated > 0
    "truncated_mean": 0.556,  # mean truncation of those
    "occluded": (0.473, 0.273, 0.200, 0.054),  # KITTI occlusion levels 0..3
    "types": {
        #               freq    k      y0     h_logstd asp_mean asp_std y2_mean y2_std trunc_rate
        "Car":            (0.7085, 0.906, 173.1, 0.277, 0.502, 0.324, 230.6, 35.2, 0.142),
        "Van":            (0.0718, 1.196, 168.4, 0.363, 0.295, 0.369, 219.0, 32.6, 0.151),
        "Truck":          (0.0270, 1.777, 170.8, 0.267, 0.119, 0.362, 207.2, 22.2, 0.112),
        "Pedestrian":     (0.1106, 1.079, 167.6, 0.176, -0.963, 0.215, 255.4, 44.1, 0.083),
        "Person_sitting": (0.0055, 0.747, 160.6, 0.139, -0.299, 0.269, 278.9, 39.9, 0.248),
        "Cyclist":        (0.0401, 1.031, 169.2, 0.230, -0.461, 0.361, 233.8, 35.8, 0.082),
        "Tram":           (0.0126, 2.191, 173.2, 0.239, 0.376, 0.424, 207.5, 21.9, 0.157),
        "Misc":           (0.0240, 0.771, 155.2, 0.381, 0.147, 0.400, 232.8, 39.2, 0.123),
    },
}
_TYPE_FIELDS = ("freq", "k", "y0", "h_logstd", "asp_mean", "asp_std", "y2_mean", "y2_std", "trunc_rate")


# --------------------------------------------------------------------------------------------
# Layouts: real or sampled
# --------------------------------------------------------------------------------------------
@dataclass
class Placed:
    """An object to draw: its type and full (unclipped) extent in output pixels."""

    type: str
    box: tuple[float, float, float, float]


def fit_layout_stats(label_dir: str | Path) -> dict:
    """Re-measure :data:`LAYOUT_STATS` from a folder of KITTI label_2 files (same structure)."""
    files = sorted(Path(label_dir).glob("*.txt"))
    if not files:
        raise DataError(f"{label_dir}: no label_2 *.txt files here")
    rows, nper = [], []
    for f in files:
        objs = [o for o in parse_label_lines(f.read_text().splitlines(), str(f)) if o.type != "DontCare"]
        nper.append(len(objs))
        rows += [(o.type, o.truncated, o.occluded, *o.bbox) for o in objs]
    types = np.array([r[0] for r in rows])
    tr, oc, x1, y1, x2, y2 = np.array([r[1:] for r in rows], np.float64).T
    h, w = y2 - y1, x2 - x1
    out = {"objects_per_image": (float(np.mean(nper)), float(np.std(nper))),
           "truncated_rate": float((tr > 0).mean()), "truncated_mean": float(tr[tr > 0].mean()),
           "occluded": tuple(float(x) for x in np.bincount(oc.astype(int), minlength=4)[:4] / len(oc)),
           "types": {}}
    for t in SYNTH_TYPES:
        sel = types == t
        m = sel & (tr < 0.05) & (y2 < 370) & (h > 0) & (w > 0)
        if m.sum() < 3:
            continue
        k, b = np.linalg.lstsq(np.stack([y2[m], np.ones(m.sum())], 1), h[m], rcond=None)[0]
        res = np.log(h[m] / np.maximum(k * y2[m] + b, 1.0))
        la = np.log(w[m] / h[m])
        out["types"][t] = (float(sel.mean()), float(k), float(-b / k), float(res.std()), float(la.mean()),
                           float(la.std()), float(y2[m].mean()), float(y2[m].std()), float((tr[sel] > 0).mean()))
    return out


def _type_weights(oversample: dict[str, float]) -> tuple[list[str], np.ndarray]:
    names = list(LAYOUT_STATS["types"])
    p = np.array([LAYOUT_STATS["types"][t][0] * float(oversample.get(t, 1.0)) for t in names])
    return names, p / p.sum()


def sample_layout(rng: np.random.Generator, size: tuple[int, int], oversample: dict[str, float] | None = None
                  ) -> list[Placed]:
    """A KITTI-like object list drawn from :data:`LAYOUT_STATS` (no real files needed).

    Args:
        size: output (W, H); the statistics are in 1242x375 pixels and scaled.
        oversample: per KITTI type, a multiplier of its class frequency.
    """
    W, H = size
    sx, sy = W / REF_SIZE[0], H / REF_SIZE[1]
    mean, std = LAYOUT_STATS["objects_per_image"]
    p = mean / std**2
    n = max(1, int(rng.negative_binomial(mean * p / (1 - p), p)))
    names, probs = _type_weights(oversample or {})
    out = []
    for t in rng.choice(names, size=n, p=probs):
        _, k, y0, hls, am, asd, ym, ysd, trate = LAYOUT_STATS["types"][t]
        y2 = float(np.clip(rng.normal(ym, ysd), y0 + 6, REF_SIZE[1] + 40))
        h = max(6.0, k * (y2 - y0) * float(np.exp(rng.normal(0, hls))))
        w = max(3.0, h * float(np.exp(rng.normal(am, asd))))
        if rng.random() < trate:  # crosses the left or right border; cut fraction like KITTI's
            cut = float(np.clip(rng.normal(LAYOUT_STATS["truncated_mean"], 0.2), 0.05, 0.85))
            x1 = -cut * w if rng.random() < 0.5 else REF_SIZE[0] - (1 - cut) * w
        else:
            x1 = float(rng.uniform(0, max(1.0, REF_SIZE[0] - w)))
        out.append(Placed(str(t), (x1 * sx, (y2 - h) * sy, (x1 + w) * sx, y2 * sy)))
    return out


def load_layouts(label_dir: str | Path) -> list[list[KittiObject]]:
    """Every label file of ``label_dir`` (sorted), DontCare removed; files with no object skipped."""
    files = sorted(Path(label_dir).glob("*.txt"))
    if not files:
        raise DataError(f"{label_dir}: synth.layouts: no KITTI label_2 *.txt files in this folder")
    out = []
    for f in files:
        objs = [o for o in parse_label_lines(f.read_text().splitlines(), str(f)) if o.type in SYNTH_TYPES]
        if objs:
            out.append(objs)
    return out


def layout_from_real(objs: list[KittiObject], size: tuple[int, int]) -> list[Placed]:
    """Scale a real object list to ``size`` and undo border clipping: a truncated box touching the
    left/right (else bottom) border is extended so the cut fraction equals its ``truncated``."""
    W, H = size
    sx, sy = W / REF_SIZE[0], H / REF_SIZE[1]
    out = []
    for o in objs:
        x1, y1, x2, y2 = o.bbox
        t = min(max(o.truncated, 0.0), 0.85)
        if t > 0.02:
            grow = t / (1 - t)  # visible span * grow = the part outside the image
            if x1 <= 2:
                x1 -= (x2 - x1) * grow
            elif x2 >= REF_SIZE[0] - 20:
                x2 += (x2 - x1) * grow
            elif y2 >= REF_SIZE[1] - 7:
                y2 += (y2 - y1) * grow
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            out.append(Placed(o.type, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)))
    return out


# --------------------------------------------------------------------------------------------
# Appearance: one parametric look per KITTI type, drawn into its own patch
# --------------------------------------------------------------------------------------------
_CAR_COLOURS = np.array([[235, 235, 235], [30, 30, 32], [160, 162, 168], [150, 20, 25], [25, 45, 120],
                         [90, 92, 95], [200, 180, 140], [20, 80, 40]], np.float32)


def _colour(rng: np.random.Generator, palette: np.ndarray | None = None, jitter: float = 25.0) -> np.ndarray:
    base = palette[rng.integers(len(palette))] if palette is not None else rng.uniform(20, 235, 3)
    return np.clip(base + rng.normal(0, jitter, 3), 0, 255).astype(np.float32)


def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _rect(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


class _Patch:
    """A mask + colour canvas in normalised coordinates u (x) and v (y), both in [0, 1]."""

    def __init__(self, ph: int, pw: int):
        self.u = ((np.arange(pw, dtype=np.float32) + 0.5) / pw)[None, :]
        self.v = ((np.arange(ph, dtype=np.float32) + 0.5) / ph)[:, None]
        self.mask = np.zeros((ph, pw), bool)
        self.rgb = np.zeros((ph, pw, 3), np.float32)
        self.aspect = pw / ph  # width / height

    def paint(self, region: np.ndarray, colour: np.ndarray) -> None:
        region = np.broadcast_to(region, self.mask.shape)
        self.rgb[region] = colour
        self.mask |= region


def _wheels(P: _Patch, rng, n: int = 2, top: float = 0.78, inset: float = 0.06) -> None:
    tyre = np.float32([18, 18, 20]) + rng.uniform(0, 15)
    width = (1 - 2 * inset) / (2.6 * n)
    for c in np.linspace(inset + width / 2, 1 - inset - width / 2, n):
        P.paint(_rect(P.u, P.v, c - width / 2, c + width / 2, top, 1.0), tyre)


def _car(P: _Patch, rng, kind: str = "Car") -> None:
    body = _colour(rng, _CAR_COLOURS)
    glass = np.float32([40, 50, 60]) + rng.uniform(0, 30)
    u, v = P.u, P.v
    roof = {"Car": rng.uniform(0.38, 0.5), "Van": rng.uniform(0.1, 0.2)}[kind]
    slope = {"Car": rng.uniform(0.2, 0.45), "Van": rng.uniform(0.0, 0.1)}[kind]
    inset = rng.uniform(0.08, 0.18) if kind == "Car" else rng.uniform(0.02, 0.06)
    slope = min(slope, 0.34 - inset)  # the roof keeps >= 30% of the width (no pointed cabins)
    # cabin: a trapezoid above the body, narrower at the top
    half = 0.5 - inset - slope * (roof - v) / max(roof, 1e-3)
    P.paint((v <= roof) & (np.abs(u - 0.5) <= half), body)
    glass_top = roof * 0.25 if kind == "Car" else rng.uniform(0.08, 0.15)
    glass_bot = roof * 0.95 if kind == "Car" else rng.uniform(0.35, 0.5)
    P.paint((v >= glass_top) & (v <= glass_bot) & (np.abs(u - 0.5) <= half - 0.06), glass)
    P.paint(_rect(u, v, 0.0, 1.0, roof, 0.88), body)
    if kind == "Van":  # vans: boxy, glass band across the upper body
        P.paint((v >= glass_top) & (v <= glass_bot) & (np.abs(u - 0.5) <= 0.44), glass)
    lamp = np.float32([200, 30, 30]) if rng.random() < 0.6 else np.float32([235, 225, 190])
    P.paint(_rect(u, v, 0.03, 0.16, 0.5, 0.6), lamp)
    P.paint(_rect(u, v, 0.84, 0.97, 0.5, 0.6), lamp)
    P.paint(_rect(u, v, 0.35, 0.65, 0.62, 0.72), np.float32([220, 220, 200]))  # plate
    _wheels(P, rng, 2, top=0.8)


def _truck(P: _Patch, rng) -> None:
    cargo, cab = _colour(rng), _colour(rng, _CAR_COLOURS)
    u, v = P.u, P.v
    split = rng.uniform(0.55, 0.75)
    P.paint(_rect(u, v, 0.0, 1.0, 0.0, split), cargo)
    stripe = np.clip(cargo * 0.7, 0, 255)
    P.paint(_rect(u, v, 0.0, 1.0, 0.0, split) & ((u * 8) % 1.0 < 0.08), stripe)  # panel seams
    P.paint(_rect(u, v, 0.0, 1.0, split, 0.87), cab)
    P.paint(_rect(u, v, 0.1, 0.9, split + 0.04, split + 0.12), np.float32([45, 50, 55]))
    _wheels(P, rng, 3, top=0.82, inset=0.03)


def _tram(P: _Patch, rng) -> None:
    body = _colour(rng, np.float32([[200, 30, 30], [240, 240, 235], [240, 200, 40], [40, 110, 60]]), 15)
    u, v = P.u, P.v
    P.paint(_rect(u, v, 0.0, 1.0, 0.08, 0.95), body)
    P.paint(_rect(u, v, 0.45, 0.55, 0.0, 0.08), np.float32([40, 40, 40]))  # pantograph
    n = int(rng.integers(3, 7))
    P.paint(_rect(u, v, 0.03, 0.97, 0.22, 0.5) & ((u * n) % 1.0 > 0.15), np.float32([50, 60, 70]))
    P.paint(_rect(u, v, 0.0, 1.0, 0.88, 1.0), np.float32([30, 30, 30]))


def _person(P: _Patch, rng, legs_top: float = 0.52, sitting: bool = False, arms: bool = True) -> None:
    skin = np.float32(rng.choice([[230, 190, 160], [190, 140, 100], [120, 80, 55]])) + rng.normal(0, 8, 3)
    shirt, trousers = _colour(rng), _colour(rng, np.float32([[30, 30, 40], [60, 60, 80], [90, 70, 50],
                                                             [140, 140, 150]]))
    u, v = P.u, P.v
    lean = rng.uniform(-0.08, 0.08)
    cx = 0.5 + lean if not sitting else 0.35
    P.paint(_ellipse(u, v, cx, 0.07, 0.11 / max(P.aspect, 0.25) * 0.25 + 0.09, 0.07), skin)  # head
    tw = rng.uniform(0.28, 0.4) if not sitting else 0.25
    P.paint(_rect(u, v, cx - tw, cx + tw, 0.13, legs_top + 0.04), shirt)  # torso
    if arms:
        P.paint(_rect(u, v, cx - tw - 0.14, cx - tw + 0.02, 0.15, legs_top - 0.02), shirt)
        P.paint(_rect(u, v, cx + tw - 0.02, cx + tw + 0.14, 0.15, legs_top - 0.02), shirt)
    if sitting:  # thighs forward, shins down, a seat under them
        P.paint(_rect(u, v, cx - tw, 1.0, legs_top, legs_top + 0.14), trousers)
        P.paint(_rect(u, v, 0.8, 1.0, legs_top, 1.0), trousers)
        P.paint(_rect(u, v, 0.0, 0.75, legs_top + 0.14, legs_top + 0.2), np.float32([80, 60, 40]))
        return
    stride = rng.uniform(0.0, 0.2)
    P.paint(_rect(u, v, cx - tw, cx - 0.03, legs_top, 1.0) & (u >= cx - tw - stride * (v - legs_top)), trousers)
    P.paint(_rect(u, v, cx + 0.03, cx + tw + stride * (v - legs_top), legs_top, 1.0), trousers)


def _cyclist(P: _Patch, rng) -> None:
    u, v = P.u, P.v
    frame = _colour(rng)
    tyre = np.float32([20, 20, 22])
    side = P.aspect > 0.75  # seen from the side: two wheel rings; from behind: one thin wheel
    if side:
        r_v = 0.2
        r_u = min(0.24, r_v / P.aspect)
        for cu in (r_u, 1 - r_u):
            d = ((u - cu) / r_u) ** 2 + ((v - (1 - r_v)) / r_v) ** 2
            P.paint((d <= 1.0) & (d >= 0.55), tyre)
        P.paint(_rect(u, v, r_u, 1 - r_u, 0.72, 0.76), frame)  # top tube
        P.paint(np.abs((u - r_u) - (1 - v - r_v) * 0.9) < 0.03 * (v > 0.6), frame)  # down tube
        sub_v = v / 0.7  # the rider sits in the upper 70%, leaning forward
        P.paint(_ellipse(u, sub_v, 0.62, 0.08, 0.08 / max(P.aspect, 0.3) + 0.04, 0.08), np.float32([200, 160, 130]))
        shirt = _colour(rng)
        P.paint((sub_v >= 0.15) & (sub_v <= 0.65) & (np.abs(u - (0.55 - 0.25 * (sub_v - 0.15))) < 0.1), shirt)
        P.paint((sub_v >= 0.6) & (v <= 0.85) & (np.abs(u - 0.45) < 0.06), _colour(rng, None, 10) * 0.4)
    else:
        P.paint(_rect(u, v, 0.4, 0.6, 0.62, 1.0) & ~_rect(u, v, 0.46, 0.54, 0.66, 0.96), tyre)  # rear wheel
        P.paint(_rect(u, v, 0.05, 0.95, 0.5, 0.54), frame)  # handlebar
        _person(P, rng, legs_top=0.42, arms=False)
        # the rider's legs end at the pedals, not the ground: clear the person's lowest part
        low = _rect(u, v, 0.0, 1.0, 0.8, 1.0) & ~_rect(u, v, 0.4, 0.6, 0.62, 1.0)
        P.mask &= ~low


def _misc(P: _Patch, rng) -> None:
    u, v = P.u, P.v
    c = _colour(rng)
    if rng.random() < 0.5:
        P.paint(_rect(u, v, 0.0, 1.0, 0.0, 1.0), c)
        P.paint(_rect(u, v, 0.0, 1.0, 0.0, 1.0) & ((v * 5) % 1.0 < 0.12), c * 0.6)
    else:
        P.paint(_ellipse(u, v, 0.5, 0.5, 0.5, 0.5), c)
        P.paint(_rect(u, v, 0.0, 1.0, 0.85, 1.0), np.float32([25, 25, 25]))


_DRAW = {"Car": lambda P, r: _car(P, r, "Car"), "Van": lambda P, r: _car(P, r, "Van"), "Truck": _truck,
         "Tram": _tram, "Pedestrian": _person, "Person_sitting": lambda P, r: _person(P, r, 0.4, True),
         "Cyclist": _cyclist, "Misc": _misc}


def _shade(P: _Patch, rng, light: float) -> None:
    """Directional shading + a little noise, so flat colours are not a giveaway."""
    g = light * (1.05 - 0.35 * P.v + rng.uniform(-0.2, 0.2) * (P.u - 0.5))
    P.rgb *= g[..., None]
    P.rgb += rng.normal(0, 6, (1, 1, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, W: int, H: int, light: float) -> tuple[np.ndarray, int]:
    """Sky, buildings, poles and a perspective road; returns (float32 [H, W, 3], horizon row)."""
    hz = int(H * rng.uniform(0.4, 0.5))
    img = np.empty((H, W, 3), np.float32)
    y = np.arange(H, dtype=np.float32)[:, None]
    x = np.arange(W, dtype=np.float32)[None, :]
    sky_top, sky_hz = rng.uniform([60, 100, 150], [140, 170, 230]), rng.uniform([170, 180, 190], [235, 235, 240])
    t = (y[:hz] / max(hz, 1))[..., None]
    img[:hz] = sky_top * (1 - t) + sky_hz * t
    # buildings / trees along the horizon, with a window grid texture
    xb = 0
    while xb < W:
        bw = int(rng.uniform(0.04, 0.18) * W)
        bh = int(rng.uniform(0.15, 0.95) * hz)
        col = rng.uniform(40, 200, 3) if rng.random() < 0.7 else np.array([40, 90, 40]) * rng.uniform(0.6, 1.3)
        sl = img[hz - bh:hz, xb:xb + bw]
        sl[:] = col
        if rng.random() < 0.6 and bh > 8:
            p = max(3, int(rng.uniform(0.02, 0.05) * H))
            yy, xx = np.ogrid[:bh, :sl.shape[1]]
            sl[((yy % p) < p // 2) & ((xx % p) < p // 2)] = col * 0.5
        xb += bw
    # road with perspective: edges converge to a vanishing point on the horizon
    vx = W * rng.uniform(0.35, 0.65)
    dy = y[hz:] - hz + 1.0
    ground = rng.uniform([70, 90, 50], [150, 150, 120])
    road = rng.uniform(70, 120)
    img[hz:] = ground
    left = vx - dy * rng.uniform(2.0, 4.0)
    right = vx + dy * rng.uniform(2.0, 4.0)
    on_road = (x >= left) & (x <= right)
    img[hz:][on_road] = road
    lane = (np.abs(x - vx - dy * rng.uniform(-0.5, 0.5)) < 0.02 * dy + 1) & ((40.0 / dy) % 1.0 < 0.5)
    img[hz:][lane & on_road] = 220
    # poles and signs: unlabelled clutter a detector must learn to ignore
    for _ in range(int(rng.integers(0, 5))):
        px, pw = int(rng.uniform(0, W)), max(1, int(rng.uniform(0.002, 0.008) * W))
        top = int(rng.uniform(0.05, 0.9) * hz)
        bottom = min(H, hz + int(rng.uniform(0.05, 0.4) * (H - hz)))
        img[top:bottom, px:px + pw] = rng.uniform(30, 120)
    # low-frequency light variation and texture
    lo = rng.normal(0, 10, (H // 16 + 1, W // 16 + 1)).astype(np.float32)
    img += np.asarray(Image.fromarray(lo, mode="F").resize((W, H), Image.BILINEAR))[..., None]
    img *= light * (1 + rng.uniform(-0.25, 0.25) * (x / W - 0.5))[..., None]
    return img, hz


def render_image(rng: np.random.Generator, layout: list[Placed], size: tuple[int, int], debug: dict | None = None
                 ) -> tuple[np.ndarray, list[KittiObject]]:
    """Draw ``layout`` far to near over a road scene; labels are measured from the drawing.

    Args:
        layout: objects with their full extents in output pixels (may cross the border).
        size: (W, H).
        debug: if a dict, receives ``ids`` (int32 [H, W]: layout index of the visible object per
            pixel, -1 background) and ``label_index`` (label position -> layout index), for tests.
    Returns:
        (uint8 RGB image [H, W, 3], KittiObject labels incl. DontCare for barely visible ones)
    """
    W, H = size
    light = float(rng.uniform(0.6, 1.25))
    img, _ = _background(rng, W, H, light)
    ids = np.full((H, W), -1, np.int32)
    order = sorted(range(len(layout)), key=lambda i: (layout[i].box[3], layout[i].box[3] - layout[i].box[1]))
    drawn = {}  # object index -> (in-image mask pixels, full mask pixels, full extent, clipped extent)
    for j in order:
        x1, y1, x2, y2 = layout[j].box
        X1, Y1 = int(np.floor(x1)), int(np.floor(y1))
        pw, ph = max(2, int(np.ceil(x2)) - X1), max(2, int(np.ceil(y2)) - Y1)
        if pw * ph > 4 * W * H:  # absurd extents (bad layout line): skip rather than allocate GBs
            continue
        cx1, cy1, cx2, cy2 = max(X1, 0), max(Y1, 0), min(X1 + pw, W), min(Y1 + ph, H)
        if cx2 - cx1 < 2 or cy2 - cy1 < 2:
            continue
        P = _Patch(ph, pw)
        _DRAW[layout[j].type](P, rng)
        _shade(P, rng, light)
        if layout[j].type in ("Car", "Van", "Truck", "Tram"):  # contact shadow on the road
            sy0 = min(H, max(0, Y1 + ph - max(1, ph // 12)))
            img[sy0:min(H, Y1 + ph + 1), cx1:cx2] *= 0.45
        m_full = P.mask
        full_area = int(m_full.sum())
        if full_area == 0:
            continue
        m = m_full[cy1 - Y1:cy2 - Y1, cx1 - X1:cx2 - X1]
        rows, cols = np.nonzero(m_full.any(1))[0], np.nonzero(m_full.any(0))[0]
        full_box = (X1 + cols[0], Y1 + rows[0], X1 + cols[-1] + 1, Y1 + rows[-1] + 1)
        if not m.any():
            continue
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        box = (cx1 + cols[0], cy1 + rows[0], cx1 + cols[-1] + 1, cy1 + rows[-1] + 1)
        img[cy1:cy2, cx1:cx2][m] = P.rgb[cy1 - Y1:cy2 - Y1, cx1 - X1:cx2 - X1][m]
        ids[cy1:cy2, cx1:cx2][m] = j
        drawn[j] = (int(m.sum()), full_area, full_box, box)
    # sensor noise on the whole frame
    # (2x2 blocks at half the std of real sensor noise: PNG encoding time grows with noise entropy)
    noise = rng.normal(0, 3, (H // 2 + 1, W // 2 + 1, 1)).astype(np.float32)
    img += noise.repeat(2, 0).repeat(2, 1)[:H, :W]
    out = np.clip(img, 0, 255).astype(np.uint8)
    visible = np.bincount(ids.ravel() + 1, minlength=len(layout) + 1)[1:]
    labels, label_index = [], []
    for j in sorted(drawn, key=lambda j: layout[j].box[0]):
        in_img, full_area, _, box = drawn[j]
        vis = visible[j] / in_img
        if visible[j] == 0:
            continue  # fully hidden: nothing to label
        box = tuple(float(b) for b in box)
        if vis < 0.1:
            labels.append(KittiObject("DontCare", box, truncated=-1, occluded=-1))
            label_index.append(j)
            continue
        occ = 0 if vis >= 0.95 else 1 if vis >= 0.5 else 2
        labels.append(KittiObject(layout[j].type, box, truncated=round(1 - in_img / full_area, 2), occluded=occ))
        label_index.append(j)
    if debug is not None:
        debug.update(ids=ids, label_index=label_index)
    return out, labels


# --------------------------------------------------------------------------------------------
# The data set on disk
# --------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")


def _layout_split_dir(cfg: SynthConfig) -> Path | None:
    """Where train.txt / val.txt assign layout files to splits: ``layout_splits``, else the
    ``ImageSets/`` beside the layouts' ``training/`` folder (KITTI's layout), else None."""
    if cfg.layout_splits:
        d = Path(cfg.layout_splits).expanduser().resolve()
        for name in ("train.txt", "val.txt"):
            if not (d / name).is_file():
                raise DataError(f"{d / name}: synth.layout_splits: expected the MSCNN-style split file here")
        return d
    guess = Path(cfg.layouts).expanduser().resolve().parent.parent / "ImageSets"
    return guess if (guess / "train.txt").is_file() and (guess / "val.txt").is_file() else None


_DIGESTS: dict[tuple, str] = {}


def _files_digest(files: list[Path]) -> str:
    """Digest of the files' names and bytes; remembered per (path, size, mtime) of each, since a data
    config is keyed many times per run and KITTI has 7,481 label files."""
    sig = tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),))
    if sig not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        _DIGESTS[sig] = h.hexdigest()[:16]
    return _DIGESTS[sig]


def _settings(cfg: SynthConfig) -> dict:
    """Every setting that changes the generated files. Real layouts enter by their contents (file names
    and bytes, and those of the split files), not by their path: the same labels in another checkout
    are the same data set, and name the same cache folder and benchmark runs."""
    layouts = None
    if cfg.layouts:
        p = Path(cfg.layouts).expanduser().resolve()
        if not p.is_dir():
            raise DataError(f"{cfg.layouts}: synth.layouts: not a folder of KITTI label_2 files")
        files = sorted(p.glob("*.txt"))
        splits = _layout_split_dir(cfg)
        layouts = {"files": len(files), "digest": _files_digest(files),
                   "splits": _files_digest([splits / "train.txt", splits / "val.txt"]) if splits else None}
    return {"version": SYNTH_VERSION, "num_images": cfg.num_images, "size": list(cfg.size), "seed": cfg.seed,
            "layouts": layouts, "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
            "oversample": {k: float(v) for k, v in sorted(cfg.oversample.items())}}


def split_counts(num_images: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Images per split; val gets at least one image (when there are two), train keeps at least one."""
    n_val = min(num_images - 1, max(1, round(num_images * val_fraction))) if num_images > 1 else 0
    n_test = min(num_images - 1 - n_val, round(num_images * test_fraction)) if test_fraction > 0 else 0
    return {"train": num_images - n_val - max(n_test, 0), "val": n_val, "test": max(n_test, 0)}


def layout_pools(cfg: SynthConfig) -> dict[str, list[str]]:
    """Layout file stems each split may draw from; no file feeds two splits.

    With an MSCNN-style split (train.txt / val.txt), train draws from ``train.txt`` and val / test
    from the first / second half of the sorted ``val.txt`` ids (KITTI ids run along drives, so the
    halves share few scenes). Without one, the sorted files are partitioned in the set's
    val / test fractions by a permutation seeded with ``cfg.seed``.
    """
    stems = sorted(f.stem for f in Path(cfg.layouts).expanduser().glob("*.txt"))
    split_dir = _layout_split_dir(cfg)
    if split_dir is not None:
        from .kitti import read_split

        have = set(stems)
        train = [s for s in read_split(split_dir / "train.txt") if s in have]
        val_ids = sorted(s for s in read_split(split_dir / "val.txt") if s in have)
        half = len(val_ids) // 2
        pools = {"train": sorted(train), "val": val_ids[:half], "test": val_ids[half:]}
    else:
        perm = [stems[i] for i in np.random.default_rng((cfg.seed, 7919)).permutation(len(stems))]
        c = split_counts(len(perm), cfg.val_fraction, cfg.test_fraction)
        pools = {"val": sorted(perm[:c["val"]]), "test": sorted(perm[c["val"]:c["val"] + c["test"]]),
                 "train": sorted(perm[c["val"] + c["test"]:])}
    if set(pools["train"]) & (set(pools["val"]) | set(pools["test"])) or set(pools["val"]) & set(pools["test"]):
        raise DataError(f"{split_dir}: synth.layout_splits: train.txt and val.txt share ids; the pools must be disjoint")
    return pools


def _assign_layouts(cfg: SynthConfig, counts: dict[str, int]) -> dict[str, list[str]]:
    """For each split, the layout stem of each of its images: drawn from the split's own pool,
    without replacement while the pool lasts (then again, a fresh permutation per round), weighted
    by ``oversample``. One RNG stream per split."""
    from .kitti import parse_label_lines

    root = Path(cfg.layouts).expanduser()
    out: dict[str, list[str]] = {}
    pools = layout_pools(cfg)
    for k, split in enumerate(SPLITS):
        n = counts[split]
        if n == 0:
            out[split] = []
            continue
        pool = []
        for s in pools[split]:
            objs = [o for o in parse_label_lines((root / f"{s}.txt").read_text().splitlines(), str(root / f"{s}.txt"))
                    if o.type in SYNTH_TYPES]
            if objs:
                pool.append((s, max([cfg.oversample.get(o.type, 1.0) for o in objs] + [1.0])))
        if not pool:
            raise DataError(f"{root}: synth.layouts: no label file with objects in the {split} pool")
        rng = np.random.default_rng((cfg.seed, 104729, k))
        w = np.array([p[1] for p in pool])
        picks: list[str] = []
        while len(picks) < n:
            take = min(n - len(picks), len(pool))
            idx = rng.choice(len(pool), size=take, replace=False, p=w / w.sum())
            picks += [pool[i][0] for i in idx]
        out[split] = picks
    return out


def synth_key(cfg: SynthConfig) -> str:
    """Cache key: a hash of every setting that changes the generated files."""
    return hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def synth_cache_dir(cfg: SynthConfig) -> Path:
    """``cfg.cache_dir``, else ``$COMPRESSDET_CACHE/synth``, else ``~/.cache/compressdet/synth``."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("COMPRESSDET_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "compressdet") / "synth"


def _check_oversample(oversample: dict[str, float]) -> None:
    for t, v in oversample.items():
        if t not in SYNTH_TYPES:
            raise UserError(f"synth.oversample: unknown KITTI type '{t}' (one of {', '.join(SYNTH_TYPES)})")
        if not v > 0:
            raise UserError(f"synth.oversample.{t}: must be > 0, got {v}")


def _write_set(out: Path, cfg: SynthConfig, progress=None) -> dict:
    """Write every file of the set into ``out`` (an empty folder). Returns the settings + timing."""
    _check_oversample(cfg.oversample)
    settings = _settings(cfg)
    W, H = cfg.size
    img_dir, lab_dir = out / "training" / "image_2", out / "training" / "label_2"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    (out / "ImageSets").mkdir()
    counts_per_split = split_counts(cfg.num_images, cfg.val_fraction, cfg.test_fraction)
    assigned = _assign_layouts(cfg, counts_per_split) if cfg.layouts else None
    root = Path(cfg.layouts).expanduser() if cfg.layouts else None
    counts: dict[str, int] = {}
    ids: dict[str, list[str]] = {s: [] for s in SPLITS}
    tsv = ["image_id\tsplit\tlayout"]
    t0 = time.perf_counter()
    i = 0
    for k, split in enumerate(SPLITS):
        for j in range(counts_per_split[split]):
            rng = np.random.default_rng((cfg.seed, k, j))  # disjoint stream per (split, image)
            if assigned is not None:
                src = root / f"{assigned[split][j]}.txt"
                objs = [o for o in parse_label_lines(src.read_text().splitlines(), str(src)) if o.type in SYNTH_TYPES]
                layout, source = layout_from_real(objs, (W, H)), src.name
            else:
                layout, source = sample_layout(rng, (W, H), cfg.oversample), "sampled"
            img, labels = render_image(rng, layout, (W, H))
            name = f"{i:06d}"
            Image.fromarray(img).save(img_dir / f"{name}.png", compress_level=1)
            (lab_dir / f"{name}.txt").write_text("".join(format_label_line(o) + "\n" for o in labels))
            for o in labels:
                counts[o.type] = counts.get(o.type, 0) + 1
            ids[split].append(name)
            tsv.append(f"{name}\t{split}\t{source}")
            i += 1
            if progress:
                progress(i, cfg.num_images)
    seconds = time.perf_counter() - t0
    train, val, test = ids["train"], ids["val"], ids["test"]
    for name, part in (("train", train), ("val", val), ("test", test), ("trainval", train + val)):
        (out / "ImageSets" / f"{name}.txt").write_text("".join(x + "\n" for x in part))
    (out / "layouts.tsv").write_text("\n".join(tsv) + "\n")
    info = {**settings, "objects": dict(sorted(counts.items())), "train_images": len(train), "val_images": len(val),
            "test_images": len(test), "generation_seconds": round(seconds, 2)}
    (out / "settings.json").write_text(json.dumps(info, indent=2) + "\n")
    source = (f"real KITTI label files from {Path(cfg.layouts).expanduser().resolve()}" if settings["layouts"]
              else "sampled from statistics fitted to the KITTI training labels")
    (out / "README.md").write_text(
        "# SynthKITTI\n\nA synthetic data set in the KITTI object layout, generated by `compressdet data synth` "
        f"(renderer version {SYNTH_VERSION}). Layouts: "
        f"{source}"
        "; pixels are procedural. Labels are measured from the drawing: box = drawn extent, truncated = fraction "
        "outside the image, occluded 0/1/2 from the hidden fraction; under 10% visible -> DontCare.\n\n"
        f"- images: {cfg.num_images} ({W}x{H}), train {len(train)}, val {len(val)}, test {len(test)}\n"
        f"- objects: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}\n"
        "- settings: settings.json (all generation settings; same settings + seed = same files)\n"
        "- layout: training/image_2/*.png, training/label_2/*.txt, ImageSets/{train,val,test,trainval}.txt\n"
        "- layouts.tsv: each image's split and source layout file; with real layouts, no file feeds two splits "
        "(train from the MSCNN train.txt ids, val / test from the two halves of val.txt)\n")
    return info


def generate_synth(out: str | Path, cfg: SynthConfig, *, progress=None) -> Path:
    """Generate a set into ``out`` atomically (temp folder beside it, then rename).

    Raises:
        UserError: ``out`` exists and is not empty.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: --out exists and is not empty; choose a new folder")
    from .._io import atomic_dir

    with atomic_dir(out) as tmp:  # the folder gets mkdir's mode (0777 & ~umask), not mkdtemp's 0700
        _write_set(tmp, cfg, progress)
    return out


def ensure_synth(cfg: SynthConfig) -> Path:
    """The cached set for ``cfg``, generated on first use (one process generates, others wait)."""
    base = synth_cache_dir(cfg)
    final = base / synth_key(cfg)
    if (final / "settings.json").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # DDP ranks / parallel tests: generate once
        try:
            if not (final / "settings.json").is_file():
                if final.exists():  # a foreign, incomplete folder: never ours (ours appear by rename)
                    shutil.rmtree(final)
                generate_synth(final, cfg)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final
