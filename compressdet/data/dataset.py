"""KITTI-layout dataset, collate, loaders and ground truth for the evaluator.

Real KITTI (``data.format: kitti``) and SynthKITTI (``data.format: synth``) share this reader; a
synth set is generated into its cache on first use by :func:`prepare_data`.

Determinism: a training sample's augmentation is drawn from ``numpy.random.default_rng((seed,
epoch, index))``. The training sampler yields ``(index, epoch)`` pairs, so the epoch reaches
DataLoader workers without re-creating them, and a resumed or DDP run draws exactly the same
augmentation for the same sample.

Resuming the training stream (the trainer's side): the train loader is infinite (its batches run
across epoch boundaries, ``drop_last`` applies to nothing). After ``step`` optimizer steps each
rank has consumed ``step * per_rank_batch`` samples; before iterating the resumed loader call
``loader.sampler.set_position(step * per_rank_batch)`` (or ``load_state_dict`` of a saved
``sampler.state_dict(consumed)``); the next batch is then the one the original run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import DataError
from ..recipe import AugmentConfig, DataConfig
from .cache import ImageCache
from .kitti import KittiObject, image_size, read_image, read_label_file, read_split, train_label
from .transforms import DetectionTransform

__all__ = ["KittiDataset", "InfiniteSampler", "prepare_data", "build_dataset", "collate", "build_loader",
           "load_ground_truth", "split_ids"]


def prepare_data(data_cfg: DataConfig) -> Path:
    """The KITTI root for ``data_cfg`` (a synth set is generated into its cache on first use).

    Raises:
        DataError: a ``kitti`` root lacks ``training/``.
    """
    if data_cfg.format == "synth":
        from .synth import ensure_synth

        return ensure_synth(data_cfg.synth)
    if data_cfg.format != "kitti":  # coco / yolo / voc: files are checked by their reader
        return Path(data_cfg.root or Path(data_cfg.yolo).parent).expanduser()
    root = Path(data_cfg.root).expanduser()
    if not (root / "training").is_dir():
        from .verify import KITTI_HOWTO

        raise DataError(f"{root}: data.root: no 'training/' folder here (expected a KITTI root holding "
                        "training/image_2, training/label_2 and ImageSets/); to get KITTI: "
                        + KITTI_HOWTO.replace("ROOT", str(root)))
    return root


SPLITS = ("train", "val", "test")


def _split_file(root: Path, data_cfg: DataConfig, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rel = Path(getattr(data_cfg, f"{split}_split"))
    path = rel if rel.is_absolute() else root / rel
    if split == "test" and not path.is_file():
        raise DataError(f"{path}: data.test_split: no held-out test split here (SynthKITTI writes ImageSets/test.txt; "
                        "for your own data, name a split file no model selection has seen)")
    return path


def split_ids(data_cfg: DataConfig, split: str, max_images: int | None = None) -> tuple[Path, list[str]]:
    """(root, the first ``max_images`` ids of the split; default: the config's max for that split)."""
    root = prepare_data(data_cfg)
    ids = read_split(_split_file(root, data_cfg, split))
    if max_images is None:
        max_images = getattr(data_cfg, f"max_{split}_images")
    return root, ids[:max_images] if max_images else ids


class KittiDataset(Dataset):
    """Items ``(image float32 Tensor[3, H, W] BGR - mean, target)`` at the model input size.

    ``target``: ``boxes`` Tensor[N, 4] xyxy float32 (model-input px), ``labels`` int64 Tensor[N]
    (index into ``classes``), ``image_id`` str, ``orig_size`` (H0, W0). Types without a training
    class (Van, Truck, DontCare, ...) are dropped here, as the seed did; the evaluator gets them
    from :func:`load_ground_truth`.

    Args:
        root: KITTI root (``training/image_2``, ``training/label_2``).
        ids: image ids, in order.
        image_size: model input (H, W).
        classes: training class names.
        augment: AugmentConfig for training, None for evaluation.
        seed: augmentation seed (per sample: (seed, epoch, index)).
        cache: an :class:`ImageCache` holding the ids, or None to decode PNGs.
    """

    def __init__(self, root: Path, ids: list[str], image_size: tuple[int, int], classes: list[str],
                 augment: AugmentConfig | None = None, seed: int = 0, cache: ImageCache | None = None):
        self.root, self.ids, self.classes = Path(root), list(ids), list(classes)
        self.image_size = tuple(image_size)
        self.transform = DetectionTransform(self.image_size, augment)
        self.seed, self.epoch, self.cache = seed, 0, cache
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for i in self.ids:
            b, lab = [], []
            for o in read_label_file(self.label_path(i)):
                c = train_label(o, self.classes)
                if c is not None and o.bbox[2] - o.bbox[0] > 0 and o.bbox[3] - o.bbox[1] > 0:
                    b.append(o.bbox)
                    lab.append(c)
            self._boxes.append(np.asarray(b, np.float32).reshape(-1, 4))
            self._labels.append(np.asarray(lab, np.int64))

    def image_path(self, image_id: str) -> Path:
        return self.root / "training" / "image_2" / f"{image_id}.png"

    def label_path(self, image_id: str) -> Path:
        return self.root / "training" / "label_2" / f"{image_id}.txt"

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for items indexed by a plain int (the train sampler passes it explicitly)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, epoch = (key if isinstance(key, tuple) else (key, self.epoch))
        image_id = self.ids[index]
        boxes = torch.from_numpy(self._boxes[index])
        if self.cache is not None:
            img, orig = self.cache.get(image_id)
            sy, sx = img.shape[-2] / orig[0], img.shape[-1] / orig[1]
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        else:
            img = read_image(self.image_path(image_id))
            orig = tuple(img.shape[-2:])
            sy = sx = 1.0
        rng = np.random.default_rng((self.seed, epoch, index)) if self.transform.augment else None
        x, boxes = self.transform(img, boxes, rng, px_scale=(sx, sy))
        return x, {"boxes": boxes, "labels": torch.from_numpy(self._labels[index]), "image_id": image_id,
                   "orig_size": (int(orig[0]), int(orig[1]))}


def build_dataset(data_cfg: DataConfig, split: str, *, train: bool, seed: int = 0) -> KittiDataset:
    """The dataset of ``split`` ("train" | "val" | "test"); ``train=True`` turns augmentation on.

    Honours ``max_<split>_images`` (first N ids) and ``data.cache``. coco, yolo and voc data come
    through their format readers (``records.RecordDataset``, same items).
    """
    if data_cfg.format not in ("kitti", "synth"):
        from .records import build_record_dataset

        return build_record_dataset(data_cfg, split, train=train, seed=seed)
    root, ids = split_ids(data_cfg, split)
    cache = None
    if data_cfg.cache:
        cache = ImageCache.build({i: root / "training" / "image_2" / f"{i}.png" for i in ids},
                                 tuple(data_cfg.image_size))
    return KittiDataset(root, ids, data_cfg.image_size, data_cfg.classes,
                        augment=data_cfg.augment if train else None, seed=seed, cache=cache)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images to Tensor[N, 3, H, W]; targets stay a list (box counts differ)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class InfiniteSampler(Sampler):
    """Endless, sharded, reshuffled-per-epoch stream of ``(index, epoch)`` for step-based training.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``, padded to a multiple of ``world_size``
    (like DistributedSampler) and split ``rank::world_size``. :meth:`set_position` resumes.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if n <= 0:
            raise DataError("the training split is empty: no images to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.per_rank = math.ceil(n / world_size)
        self.epoch, self.start = 0, 0

    def _order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        idx += idx[: self.per_rank * self.world_size - self.n]
        return idx[self.rank::self.world_size]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = int(epoch), 0

    def set_position(self, consumed: int) -> None:
        """Continue after ``consumed`` samples of this rank (= steps done x per-rank batch)."""
        self.epoch, self.start = divmod(int(consumed), self.per_rank)

    def state_dict(self, consumed: int) -> dict:
        return {"consumed": int(consumed), "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.set_position(state["consumed"])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        while True:
            order = self._order(epoch)
            for i in range(start, len(order)):
                yield order[i], epoch
            epoch, start = epoch + 1, 0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode/augment; intra-op threads would fight the main process


def build_loader(dataset: KittiDataset, *, batch_size: int, train: bool, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, drop_last: bool | None = None,
                 pin_memory: bool | None = None) -> DataLoader:
    """DataLoader over ``dataset``; ``batch_size`` is per process.

    ``train=True``: an endless :class:`InfiniteSampler` stream (see the module docstring for
    resuming; iterate it ``steps`` times, ``len()`` is undefined). ``train=False``: one ordered
    pass, DistributedSampler(shuffle=False) when ``world_size > 1`` (it pads the last ranks by
    repeating ids; drop duplicates by ``image_id`` when gathering). Pinned memory on CUDA
    (``pin_memory=None``: when CUDA is available; pass False for a CPU run on a CUDA machine).
    """
    if drop_last is None:
        drop_last = train
    common = dict(batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                  pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
                  persistent_workers=num_workers > 0,
                  worker_init_fn=_worker_init if num_workers > 0 else None)
    if train:
        sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
        return DataLoader(dataset, sampler=sampler, drop_last=drop_last, **common)
    sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
               if world_size > 1 else None)
    return DataLoader(dataset, sampler=sampler, shuffle=False, drop_last=drop_last, **common)


def load_ground_truth(data_cfg: DataConfig, split: str, max_images: int | None = None
                      ) -> tuple[dict[str, list[KittiObject]], dict[str, tuple[int, int]]]:
    """All objects (DontCare included) in original pixels, and each image's (H, W), for evaluation.

    Covers the same ids as ``build_dataset(data_cfg, split, ...)`` unless ``max_images`` is given.
    KITTI layout only (kitti, synth): other formats have no KITTI fields; see
    ``records.load_box_ground_truth``.
    """
    if data_cfg.format not in ("kitti", "synth"):
        raise DataError(f"data.format '{data_cfg.format}': KITTI ground truth (truncation, occlusion) exists only "
                        "for kitti/synth data; evaluate it with eval.metric: coco")
    root, ids = split_ids(data_cfg, split, max_images)
    gt, sizes = {}, {}
    for i in ids:
        gt[i] = read_label_file(root / "training" / "label_2" / f"{i}.txt")
        sizes[i] = image_size(root / "training" / "image_2" / f"{i}.png")
    return gt, sizes
