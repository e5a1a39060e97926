"""build_dataset / collate / build_loader / load_ground_truth on a tiny SynthKITTI set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressdet.data import build_dataset, build_loader, collate, load_ground_truth, prepare_data, to_original
from compressdet.data.dataset import InfiniteSampler
from compressdet.errors import DataError
from compressdet.recipe import DataConfig

torch.set_num_threads(1)
KITTI = Path(__file__).resolve().parents[2] / "shared" / "kitti_real"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> DataConfig:
    cache = tmp_path_factory.mktemp("synth")
    return DataConfig(format="synth", image_size=(64, 192),
                      synth={"num_images": 10, "size": (248, 75), "seed": 0, "cache_dir": str(cache)})


def test_items_follow_the_contract(cfg):
    ds = build_dataset(cfg, "train", train=True, seed=0)
    assert len(ds) == 6  # 2 of 10 go to val, 2 to test
    x, t = ds[0]
    assert x.shape == (3, 64, 192) and x.dtype == torch.float32
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
    assert t["labels"].dtype == torch.int64 and len(t["labels"]) == len(t["boxes"])
    assert t["image_id"] == "000000" and t["orig_size"] == (75, 248)
    assert (t["labels"] < 3).all()
    assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
    assert -124 < x.min() and x.max() < 152  # BGR minus mean, no std


def test_eval_items_map_back_to_original_labels(cfg):
    ds = build_dataset(cfg, "val", train=False)
    gt, sizes = load_ground_truth(cfg, "val")
    assert list(gt) == ds.ids and sizes[ds.ids[0]] == (75, 248)
    for i in range(len(ds)):
        _, t = ds[i]
        want = [o.bbox for o in gt[t["image_id"]] if o.type in ("Car", "Pedestrian", "Cyclist")]
        got = to_original(t["boxes"], (64, 192), t["orig_size"])
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float32).reshape(-1, 4), atol=1e-3)


def test_max_images_takes_the_first_ids(cfg):
    c = cfg.model_copy(update={"max_train_images": 2, "max_val_images": 1})
    assert build_dataset(c, "train", train=False).ids == ["000000", "000001"]
    assert list(load_ground_truth(c, "val")[0]) == ["000006"]
    assert len(load_ground_truth(c, "val", max_images=5)[0]) == 2


def test_augmentation_depends_on_seed_epoch_index_only(cfg):
    ds = build_dataset(cfg, "train", train=True, seed=1)
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    ds.set_epoch(5)
    assert torch.equal(ds[2][0], a[0])
    assert not torch.equal(ds[(2, 6)][0], a[0])
    assert not torch.equal(build_dataset(cfg, "train", train=True, seed=2)[(2, 5)][0], a[0])


def test_loader_batches_and_resumes(cfg):
    ds = build_dataset(cfg, "train", train=True, seed=0)
    loader = build_loader(ds, batch_size=4, train=True, seed=0)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]  # 12 samples: runs across two epochs of 6
    images, targets = batches[0]
    assert images.shape == (4, 3, 64, 192) and len(targets) == 4
    resumed = build_loader(ds, batch_size=4, train=True, seed=0)
    resumed.sampler.set_position(2 * 4)  # after 2 steps
    img3, t3 = next(iter(resumed))
    assert torch.equal(img3, batches[2][0]) and [t["image_id"] for t in t3] == [t["image_id"] for t in batches[2][1]]


def test_sampler_shards_are_disjoint_and_reshuffled():
    full = [InfiniteSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    epoch0 = [[next(iter(s)) for _ in range(1)] for s in full]
    streams = [iter(s) for s in full]
    first = [[next(st) for _ in range(4)] for st in streams]  # 4 per rank = ceil(10/3): one epoch
    ids = sorted(i for sh in first for i, e in sh)
    assert set(ids) == set(range(10)) and all(e == 0 for sh in first for _, e in sh)
    nxt = [next(st) for st in streams]
    assert all(e == 1 for _, e in nxt)
    assert epoch0[0][0] == first[0][0]
    s = InfiniteSampler(10, seed=3)
    s.set_position(23)
    assert next(iter(s)) == (InfiniteSampler(10, seed=3)._order(2)[3], 2)


def test_eval_loader_covers_split_once(cfg):
    ds = build_dataset(cfg, "val", train=False)
    ids = [t["image_id"] for _, ts in build_loader(ds, batch_size=3, train=False, seed=0) for t in ts]
    assert ids == ds.ids
    shards = [[t["image_id"] for _, ts in build_loader(ds, batch_size=1, train=False, seed=0, rank=r, world_size=2)
               for t in ts] for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(ds.ids)


def test_cache_path_matches_decode_path(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSDET_CACHE", str(tmp_path))
    plain = build_dataset(cfg, "val", train=False)
    cached = build_dataset(cfg.model_copy(update={"cache": True}), "val", train=False)
    assert cached.cache is not None and len(list((tmp_path / "images").iterdir())) == 1
    (xa, ta), (xb, tb) = plain[0], cached[0]
    assert torch.allclose(ta["boxes"], tb["boxes"], atol=1e-3) and ta["orig_size"] == tb["orig_size"]
    assert (xa - xb).abs().mean() < 2.0  # same resize, rounded to uint8 once more
    build_dataset(cfg.model_copy(update={"cache": True}), "val", train=False)  # reused, not rebuilt
    assert len(list((tmp_path / "images").iterdir())) == 1
    aug = build_dataset(cfg.model_copy(update={"cache": True}), "train", train=True)
    x, t = aug[(0, 0)]
    assert x.shape == (3, 64, 192)


def test_collate_keeps_targets_as_list():
    b = [(torch.zeros(3, 4, 4), {"boxes": torch.zeros(k, 4)}) for k in (0, 2)]
    images, targets = collate(b)
    assert images.shape == (2, 3, 4, 4) and [len(t["boxes"]) for t in targets] == [0, 2]


def test_missing_image_is_a_data_error(tmp_path):
    root = tmp_path / "k"
    (root / "training" / "label_2").mkdir(parents=True)
    (root / "training" / "image_2").mkdir()
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000042\n")
    (root / "training" / "label_2" / "000042.txt").write_text(
        "Car 0.00 0 -1.5 1 2 30 40 1 1 1 1 1 1 0\n")
    c = DataConfig(format="kitti", root=str(root), image_size=(64, 192))
    ds = build_dataset(c, "train", train=False)
    with pytest.raises(DataError, match="000042.png: image not found"):
        ds[0]
    with pytest.raises(DataError, match="no 'training/' folder"):
        prepare_data(DataConfig(format="kitti", root=str(tmp_path)))


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"real KITTI sample not found at {KITTI} (../shared)")
def test_real_kitti_through_the_same_reader():
    c = DataConfig(format="kitti", root=str(KITTI), train_split="ImageSets/real_train.txt",
                   val_split="ImageSets/real_val.txt", image_size=(96, 320))
    ds = build_dataset(c, "val", train=False)
    assert len(ds) == 17
    x, t = ds[0]
    assert x.shape == (3, 96, 320) and t["orig_size"][1] > 1200
    gt, sizes = load_ground_truth(c, "val")
    assert any(o.type == "DontCare" for objs in gt.values() for o in objs)
    assert all(h in (370, 374, 375, 376) for h, _ in sizes.values())
