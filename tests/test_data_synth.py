"""SynthKITTI: labels match the drawing, determinism, layouts, fitted constants, atomic cache, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compressdet.data.kitti import read_label_file, read_split
from compressdet.data.synth import (
    LAYOUT_STATS,
    SYNTH_TYPES,
    Placed,
    ensure_synth,
    fit_layout_stats,
    generate_synth,
    layout_from_real,
    load_layouts,
    render_image,
    sample_layout,
    synth_key,
)
from compressdet.errors import UserError
from compressdet.recipe import SynthConfig

KITTI = Path(__file__).resolve().parents[2] / "shared" / "kitti_real"
needs_kitti = pytest.mark.skipif(not KITTI.is_dir(), reason=f"real KITTI sample not found at {KITTI} (../shared)")
SIZE = (320, 96)


@pytest.mark.parametrize("kind", SYNTH_TYPES)
def test_box_equals_drawn_extent(kind):
    dbg: dict = {}
    _, labels = render_image(np.random.default_rng(3), [Placed(kind, (40.3, 20.6, 150.2, 90.1))], SIZE, debug=dbg)
    assert len(labels) == 1 and labels[0].type == kind
    ys, xs = np.nonzero(dbg["ids"] == 0)
    assert labels[0].bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert labels[0].truncated == 0 and labels[0].occluded == 0
    x1, y1, x2, y2 = labels[0].bbox  # the silhouette spans (nearly) its layout box
    assert 39 <= x1 <= 55 and 20 <= y1 <= 35 and 130 <= x2 <= 152 and 80 <= y2 <= 92


def test_fully_hidden_object_is_not_labelled():
    # a tram's body (full width, rows 8%..95%) hides a small far car completely
    layout = [Placed("Car", (100, 40, 120, 60)), Placed("Tram", (50, 20, 250, 90))]
    dbg: dict = {}
    _, labels = render_image(np.random.default_rng(0), layout, SIZE, debug=dbg)
    assert [o.type for o in labels] == ["Tram"]
    assert not (dbg["ids"] == 0).any()


def test_partly_hidden_object_gets_occlusion_level():
    layout = [Placed("Tram", (60, 30, 200, 70)), Placed("Misc", (20, 20, 130, 90))]
    _, labels = render_image(np.random.default_rng(1), layout, SIZE)
    tram = [o for o in labels if o.type == "Tram"]
    assert tram and tram[0].occluded in (1, 2)


def test_truncation_equals_cut_fraction():
    # a tram is nearly a full rectangle, symmetric about its centre: half of it lies left of x=0
    _, labels = render_image(np.random.default_rng(0), [Placed("Tram", (-100, 10, 100, 90))], SIZE)
    (o,) = labels
    assert o.bbox[0] == 0 and o.bbox[2] == 100
    assert abs(o.truncated - 0.5) <= 0.02
    _, labels = render_image(np.random.default_rng(0), [Placed("Tram", (220, 10, 420, 90))], SIZE)
    assert abs(labels[0].truncated - 0.5) <= 0.02 and labels[0].bbox[2] == SIZE[0]


def test_object_outside_image_is_not_labelled():
    _, labels = render_image(np.random.default_rng(0), [Placed("Car", (-80, 10, -5, 50))], SIZE)
    assert labels == []


def test_render_is_deterministic_per_seed():
    a = render_image(np.random.default_rng(7), sample_layout(np.random.default_rng(7), SIZE), SIZE)
    b = render_image(np.random.default_rng(7), sample_layout(np.random.default_rng(7), SIZE), SIZE)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_oversample_shifts_the_class_mix():
    def cyclist_share(over):
        rng = np.random.default_rng(0)
        types = [p.type for _ in range(200) for p in sample_layout(rng, SIZE, over)]
        return types.count("Cyclist") / len(types)

    base, over = cyclist_share({}), cyclist_share({"Cyclist": 5})
    assert 0.02 < base < 0.07 and over > 2.5 * base


def test_sampled_layouts_look_like_kitti():
    rng = np.random.default_rng(0)
    layouts = [sample_layout(rng, (1242, 375)) for _ in range(300)]
    n = np.array([len(x) for x in layouts])
    assert 4.5 < n.mean() < 6.5
    cars = np.array([p.box for lay in layouts for p in lay if p.type == "Car"])
    h = cars[:, 3] - cars[:, 1]
    near = cars[:, 3] > 260
    assert np.median(h[near]) > 2 * np.median(h[cars[:, 3] < 200])  # nearer (lower) boxes are taller


@needs_kitti
def test_fitted_constants_still_agree_with_kitti():
    got = fit_layout_stats(KITTI / "training" / "label_2_all")
    assert got["objects_per_image"][0] == pytest.approx(LAYOUT_STATS["objects_per_image"][0], rel=0.02)
    assert got["truncated_rate"] == pytest.approx(LAYOUT_STATS["truncated_rate"], abs=0.01)
    for t, ref in LAYOUT_STATS["types"].items():
        np.testing.assert_allclose(got["types"][t], ref, rtol=0.05, atol=0.01, err_msg=t)


@needs_kitti
def test_real_layouts_scaled_and_untruncated():
    layouts = load_layouts(KITTI / "training" / "label_2")
    assert len(layouts) == 29
    placed = layout_from_real(layouts[0], (621, 187))  # half size
    assert len(placed) == len(layouts[0])
    for o, p in zip(layouts[0], placed, strict=True):
        assert p.box[3] == pytest.approx(o.bbox[3] / 2, rel=0.01) or o.truncated > 0


@needs_kitti
def test_generate_with_real_layouts(tmp_path):
    cfg = SynthConfig(num_images=4, size=SIZE, seed=1, layouts=str(KITTI / "training" / "label_2"),
                      oversample={"Cyclist": 10})
    root = generate_synth(tmp_path / "s", cfg)
    types = [o.type for i in range(4) for o in read_label_file(root / "training" / "label_2" / f"{i:06d}.txt")]
    assert "Cyclist" in types  # layouts holding cyclists are drawn 10x more often


def test_generate_layout_and_determinism(tmp_path):
    cfg = SynthConfig(num_images=5, size=SIZE, seed=3, val_fraction=0.4)
    a, b = generate_synth(tmp_path / "a", cfg), generate_synth(tmp_path / "b", cfg)
    assert read_split(a / "ImageSets" / "train.txt") == ["000000", "000001"]
    assert read_split(a / "ImageSets" / "val.txt") == ["000002", "000003"]
    assert read_split(a / "ImageSets" / "test.txt") == ["000004"]
    assert len(read_split(a / "ImageSets" / "trainval.txt")) == 4  # the test image is in neither
    assert (a / "layouts.tsv").read_text().splitlines()[-1] == "000004\ttest\tsampled"
    assert (a / "README.md").is_file() and json.loads((a / "settings.json").read_text())["seed"] == 3
    for i in range(5):
        for sub, ext in (("image_2", "png"), ("label_2", "txt")):
            fa, fb = (r / "training" / sub / f"{i:06d}.{ext}" for r in (a, b))
            assert fa.read_bytes() == fb.read_bytes()
    with pytest.raises(UserError, match="not empty"):
        generate_synth(a, cfg)


def test_ensure_synth_caches_by_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSDET_CACHE", str(tmp_path / "cache"))
    cfg = SynthConfig(num_images=2, size=SIZE)
    root = ensure_synth(cfg)
    assert root == tmp_path / "cache" / "synth" / synth_key(cfg)
    mtime = (root / "settings.json").stat().st_mtime_ns
    assert ensure_synth(cfg) == root and (root / "settings.json").stat().st_mtime_ns == mtime
    other = SynthConfig(num_images=2, size=SIZE, seed=1)
    assert synth_key(other) != synth_key(cfg)
    assert not [p for p in (tmp_path / "cache" / "synth").iterdir() if ".tmp" in p.name]  # no leftovers


def test_killed_generation_leaves_no_set(tmp_path, monkeypatch):
    import compressdet.data.synth as synth

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "render_image", boom)
    cfg = SynthConfig(num_images=2, size=SIZE, cache_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        ensure_synth(cfg)
    assert not (tmp_path / synth_key(cfg)).exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_cli_data_synth(tmp_path, capsys):
    from compressdet.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "o"), "--num-images", "3", "--size", "160x48",
                 "--seed", "2", "--oversample", "Cyclist=3"]) == 0
    assert len(list((tmp_path / "o" / "training" / "image_2").glob("*.png"))) == 3
    assert json.loads((tmp_path / "o" / "settings.json").read_text())["oversample"] == {"Cyclist": 3.0}
    assert main(["data", "synth", "--out", str(tmp_path / "p"), "--oversample", "Bike=3"]) == 2
    assert "unknown KITTI type 'Bike'" in capsys.readouterr().err


def _tsv(root: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in (root / "layouts.tsv").read_text().splitlines()[1:]]


@needs_kitti
def test_no_layout_feeds_two_splits_mscnn(tmp_path):
    """Each split draws only from its own pool: train from MSCNN train.txt, val / test from the
    halves of val.txt; no label file appears in two splits, and within a split none repeats while
    its pool lasts."""
    from compressdet.data.synth import layout_pools

    cfg = SynthConfig(num_images=120, size=(160, 48), seed=0, layouts=str(KITTI / "training" / "label_2_all"))
    pools = layout_pools(cfg)
    mscnn_train = set(read_split(KITTI / "ImageSets" / "train.txt"))
    mscnn_val = sorted(read_split(KITTI / "ImageSets" / "val.txt"))
    assert set(pools["train"]) <= mscnn_train
    assert pools["val"] == mscnn_val[: len(mscnn_val) // 2] and pools["test"] == mscnn_val[len(mscnn_val) // 2:]
    root = generate_synth(tmp_path / "s", cfg)
    rows = _tsv(root)
    by_split: dict[str, list[str]] = {}
    for image_id, split, layout in rows:
        by_split.setdefault(split, []).append(layout.removesuffix(".txt"))
        assert image_id in read_split(root / "ImageSets" / f"{split}.txt")
    assert {k: len(v) for k, v in by_split.items()} == {"train": 72, "val": 24, "test": 24}
    for a in by_split:
        assert len(set(by_split[a])) == len(by_split[a])  # without replacement while the pool lasts
        assert set(by_split[a]) <= set(pools[a])
        for b in by_split:
            if a < b:
                assert not set(by_split[a]) & set(by_split[b]), (a, b)


def test_no_layout_feeds_two_splits_without_split_files(tmp_path):
    """A label folder with no ImageSets beside it is partitioned by a seeded permutation."""
    lab = tmp_path / "labels"
    lab.mkdir()
    for i in range(30):
        (lab / f"{i:06d}.txt").write_text(f"Car 0.00 0 0 {10 + i} 150 {200 + i} 300 0 0 0 0 0 0 0\n")
    cfg = SynthConfig(num_images=20, size=(160, 48), seed=5, layouts=str(lab), val_fraction=0.3, test_fraction=0.3)
    rows = _tsv(generate_synth(tmp_path / "s", cfg))
    splits = {}
    for _, split, layout in rows:
        splits.setdefault(layout, set()).add(split)
    assert all(len(v) == 1 for v in splits.values())
    assert {s for _, s, _ in rows} == {"train", "val", "test"}


def test_split_fractions_validated():
    with pytest.raises(ValueError, match="leave training images"):
        SynthConfig(val_fraction=0.5, test_fraction=0.5)


def test_test_split_reads_and_missing_test_split_is_a_clear_error(tmp_path):
    from compressdet.data.dataset import split_ids
    from compressdet.errors import DataError
    from compressdet.recipe import DataConfig

    cfg = DataConfig(format="synth", image_size=(48, 160), synth=SynthConfig(num_images=10, size=(160, 48),
                                                                            cache_dir=str(tmp_path)))
    root, ids = split_ids(cfg, "test")
    assert ids == read_split(root / "ImageSets" / "test.txt") and len(ids) == 2
    assert not set(ids) & set(split_ids(cfg, "val")[1]) and not set(ids) & set(split_ids(cfg, "train")[1])
    (root / "ImageSets" / "test.txt").unlink()
    with pytest.raises(DataError, match="data.test_split"):
        split_ids(cfg, "test")


def test_synth_key_names_layout_contents_not_their_path(tmp_path):
    """The same label files in another checkout are the same data set (same cache folder, same
    benchmark run names); a changed byte or a changed split file is another set."""
    import shutil

    def layouts(root):
        lab = root / "training" / "label_2"
        lab.mkdir(parents=True)
        for i in range(6):
            (lab / f"{i:06d}.txt").write_text(f"Car 0.00 0 0 {10 + i} 150 {200 + i} 300 0 0 0 0 0 0 0\n")
        (root / "ImageSets").mkdir()
        (root / "ImageSets" / "train.txt").write_text("000000\n000001\n000002\n")
        (root / "ImageSets" / "val.txt").write_text("000003\n000004\n000005\n")
        return lab

    a = layouts(tmp_path / "checkout_a" / "kitti")
    b = tmp_path / "elsewhere" / "kitti"
    shutil.copytree(a.parents[1], b)
    key = lambda lab: synth_key(SynthConfig(num_images=4, size=SIZE, layouts=str(lab)))  # noqa: E731
    assert key(a) == key(b / "training" / "label_2")
    (b / "ImageSets" / "val.txt").write_text("000004\n000003\n000005\n")
    assert key(a) != key(b / "training" / "label_2")
    (a / "000005.txt").write_text("Car 0.00 0 0 11 150 201 300 0 0 0 0 0 0 0\n")
    before = key(b / "training" / "label_2")
    shutil.copy(a / "000005.txt", b / "training" / "label_2" / "000005.txt")
    assert key(b / "training" / "label_2") != before
