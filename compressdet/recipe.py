"""Recipe schema and loader: one YAML file describes a whole compression chain.

The schema is strict (unknown keys are errors) and every error names the file, the line and the
field, e.g. ``recipes/x.yaml:14: stages[2].teacher: no stage named 'teachr' (did you mean
'teacher'?)``. Stage kinds are looked up in a registry so later stage kinds (and tests) add their
own config model with :func:`register_stage_schema`.

Example:
    >>> recipe = load_recipe("recipes/quickstart.yaml", ["stages.student.schedule.steps=20"])
    >>> [s.name for s in recipe.stages]
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._yaml import DuplicateKeyError, compose_unique, construct, line_map, safe_load_unique
from ._yaml import format_key_path as _fmt_loc
from .conventions import KITTI_CLASSES
from .errors import RecipeError, UserError, one_line

__all__ = [
    "Recipe", "StageConfig", "DataConfig", "SplitFiles", "ModelConfig", "ScheduleConfig", "ImitationConfig",
    "PostprocessConfig", "EvalConfig", "TrainStage", "PruneStage", "QatStage", "PtqStage",
    "ExportStage", "BenchStage", "DeployStage", "ModelFileStage", "load_recipe", "parse_recipe", "register_stage_schema",
    "stage_schemas", "apply_overrides",
]

CLASS_NAMES = KITTI_CLASSES


class _Strict(BaseModel):
    #: no NaN / inf anywhere (``lr_min: .inf``, ``weight_decay: .nan``): no recipe number means them
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
class SynthConfig(_Strict):
    """SynthKITTI generation settings; the generated set is cached under a key of these values."""

    num_images: int = Field(400, gt=0, description="images to generate (train + val + test)")
    size: tuple[int, int] = Field((1242, 375), description="image size, W x H (KITTI's is 1242x375)")
    seed: int = Field(0, description="generation seed")
    layouts: str | None = Field(None, description="folder of real KITTI label_2 files to take object layouts from")
    layout_splits: str | None = Field(
        None, description="folder with train.txt / val.txt naming which layout files feed which split (default: "
                          "the ImageSets/ beside the layouts' training/ folder, else a seeded partition of the files)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of images in val (selection)")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="held-out images, reported on, never selected on")
    oversample: dict[str, float] = Field(default_factory=dict,
                                         description="per KITTI type, how much more often layouts holding it are drawn")
    cache_dir: str | None = Field(None, description="where generated sets are cached (default ~/.cache/compressdet/synth)")

    @model_validator(mode="after")
    def _fractions(self) -> "SynthConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must leave training images, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        return self


class AugmentConfig(_Strict):
    """The seed's augmentation (METHOD.md section 4); each step can be switched off."""

    enabled: bool = Field(True, description="false: no augmentation at all")
    brightness: int = Field(50, ge=0, description="offset drawn from U{-b..b}")
    contrast: tuple[float, float] | None = Field((0.5, 1.5), description="contrast factor drawn from U(lo, hi); null: off")
    drift: tuple[int, int] | None = Field((150, 100), description="max crop/pad in px, (x, y)")
    flip: float = Field(0.5, ge=0, le=1, description="horizontal-flip probability")


class SplitFiles(_Strict):
    """Where a ``coco`` or ``voc`` set's splits are, relative to ``data.root`` (absolute paths kept).

    COCO: one annotation JSON per split (default ``annotations/<split>.json``) and ``images``, the folder
    the JSON's ``file_name`` is relative to (default ``images``; a mapping gives one folder per split).
    VOC: one ``ImageSets/Main/<split>.txt`` id list per split (the default), ``Annotations/`` and
    ``JPEGImages/`` beside it (``images`` overrides the image folder).
    """

    train: str | None = Field(None, description="the train split's file (COCO JSON or VOC id list)")
    val: str | None = Field(None, description="the val split's file")
    test: str | None = Field(None, description="the test split's file")
    images: str | dict[str, str] | None = Field(None, description="image folder, or one per split")


def _categories_of(data: "DataConfig") -> list[str]:
    """The category names of the first split present (train, val, test), read from its annotations (no image
    opened), for omitted classes."""
    from .data.formats import get_format

    try:  # train's; a set converted for evaluation alone has val or test only
        got = next(filter(None, (get_format(data.format).categories(data, split, None)
                                 for split in ("train", "val", "test"))), None)
    except UserError as e:  # a file that is there but unreadable: its own one line names it
        raise ValueError(f"classes: omitted, and the annotations cannot be read to take them from: {e}") from None
    where = data.yolo or data.root or "data.root"
    if got is None:
        raise ValueError(f"classes: omitted, and no annotations were found ({data.format} data at {where}) to "
                         "take the categories from; give data.classes")
    names = sorted(got[0]) if data.format == "voc" else list(got[0])  # VOC declares none: its usual sorted order
    if not names or len({n.lower() for n in names}) != len(names):
        raise ValueError(f"classes: omitted, and the categories of {got[1]} ({names}) are no usable class list "
                         "(empty, or names repeated up to case); give data.classes")
    return names


class DataConfig(_Strict):
    """Where the images and labels are, how they are read, and the model's input size and classes."""

    format: Literal["kitti", "synth", "coco", "yolo", "voc"] = Field(
        "synth", description="the dataset's format (synth: SynthKITTI, generated on first use)")
    root: str | None = Field(None, description="KITTI/COCO/VOC root (kitti: holds training/ and ImageSets/)")
    train_split: str = Field("ImageSets/train.txt", description="kitti/synth: image-id list of the training split")
    val_split: str = Field("ImageSets/val.txt", description="kitti/synth: image-id list of the split every selection is made on")
    test_split: str = Field("ImageSets/test.txt", description="held-out split: reported on, never selected on")
    coco: SplitFiles | None = Field(None, description="coco: annotation JSON per split + image folder")
    voc: SplitFiles | None = Field(None, description="voc: ImageSets/Main/<split>.txt per split")
    yolo: str | None = Field(None, description="yolo: the Ultralytics dataset YAML (default <root>/data.yaml)")
    skip_bad: bool = Field(False, description="count and log bad annotations/images instead of failing")
    image_size: tuple[int, int] = Field((384, 1248), description="model input, H x W; both divisible by 16")
    classes: list[str] | None = Field(
        None, description="the model's classes, in class-index order (kitti/synth: from car, pedestrian, cyclist). "
        "Omitted: kitti/synth all three; coco/yolo/voc the class_map's targets, else the train split's categories "
        "(or the first split present) "
        "(COCO's as listed, the YOLO YAML's names, VOC's object names sorted); a run's recipe.yaml records them")
    class_map: dict[str, str | None] = Field(
        default_factory=dict, description="coco/yolo/voc: source category -> model class (null drops it); "
        "subset, rename, merge. Default: a category maps to the class of the same name (case-insensitive)")
    synth: SynthConfig = Field(default_factory=SynthConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: bool = Field(False, description="decode + resize once into a uint8 memmap cache")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the training process)")
    max_train_images: int | None = Field(None, gt=0, description="use only the first N training images (quick runs)")
    max_val_images: int | None = Field(None, gt=0, description="use only the first N val images")
    max_test_images: int | None = Field(None, gt=0, description="use only the first N test images")

    #: fields read by some formats only (every other field applies to all); ``recipe check
    #: --print-resolved`` leaves out those the recipe's format does not read
    FORMAT_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "root": ("kitti", "coco", "yolo", "voc"), "train_split": ("kitti", "synth"), "val_split": ("kitti", "synth"),
        "test_split": ("kitti", "synth"), "coco": ("coco",), "voc": ("voc",), "yolo": ("yolo",),
        "class_map": ("coco", "yolo", "voc"), "synth": ("synth",)}

    def unused_fields(self) -> list[str]:
        """The fields ``self.format`` does not read."""
        return [f for f, fmts in self.FORMAT_FIELDS.items() if self.format not in fmts]

    @field_validator("image_size")
    @classmethod
    def _div16(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] % 16 or v[1] % 16 or min(v) <= 0:
            raise ValueError(f"both sides must be positive multiples of 16, got {v[0]}x{v[1]}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if v is None:  # omitted: filled in by _default_classes
            return v
        if info.data.get("format", "synth") in ("kitti", "synth"):
            bad = [c for c in v if c not in CLASS_NAMES]
            if bad or not v or len(set(v)) != len(v):
                raise ValueError(f"classes must be distinct names from {list(CLASS_NAMES)}, got {v}")
        elif not v or len({c.lower() for c in v}) != len(v) or not all(isinstance(c, str) and c.strip() for c in v):
            raise ValueError(f"classes must be distinct (case-insensitively: source categories match them so), "
                             f"non-empty names, got {v}")
        return v

    @field_validator("class_map")
    @classmethod
    def _class_map(cls, v: dict[str, str | None], info: ValidationInfo) -> dict[str, str | None]:
        if v and info.data.get("format", "synth") in ("kitti", "synth"):
            raise ValueError("class_map is for coco/yolo/voc data (KITTI maps Car, Pedestrian, Cyclist itself)")
        classes = info.data.get("classes")
        lower = {c.lower() for c in classes or []}
        bad = sorted({t for t in v.values() if t is not None and t.lower() not in lower})
        if bad and classes is not None:  # classes omitted: the targets are the classes
            raise ValueError(f"class_map targets {bad} are not in data.classes {classes}")
        keys = [k.lower() for k in v]
        twice = sorted({k for k in v if keys.count(k.lower()) > 1})
        if twice:  # category names match case-insensitively: two spellings would be one key
            raise ValueError(f"class_map keys {twice} are the same category (names match case-insensitively)")
        return v

    @model_validator(mode="after")
    def _root(self) -> "DataConfig":
        """First of the checks (pydantic runs them in this order): the omitted classes are read from here."""
        if self.format == "kitti" and not self.root:
            raise ValueError("format 'kitti' needs data.root (a folder holding training/ and ImageSets/)")
        if self.format in ("coco", "voc") and not self.root:
            raise ValueError(f"format '{self.format}' needs data.root (the folder its files are relative to)")
        if self.format == "yolo" and not (self.root or self.yolo):
            raise ValueError("format 'yolo' needs data.yolo (the dataset YAML) or data.root holding data.yaml")
        return self

    @model_validator(mode="after")
    def _default_classes(self) -> "DataConfig":
        """Omitted classes come from the data, never from KITTI: a COCO set of people and dogs trains a
        person/dog detector without a word in the recipe."""
        if self.classes is not None:
            return self
        if self.format in ("kitti", "synth"):
            self.classes = list(CLASS_NAMES)
        elif self.class_map:
            self.classes = list(dict.fromkeys(t for t in self.class_map.values() if t is not None))
            if not self.classes:
                raise ValueError("classes: omitted, and class_map drops every category; give data.classes")
        else:
            self.classes = _categories_of(self)
        return self


# --------------------------------------------------------------------------------------------
# Shared pieces of stage configs
# --------------------------------------------------------------------------------------------
class ModelConfig(_Strict):
    #: the fields only ``retinanet_*`` builders take, and what a model without them lacks
    RETINANET_ONLY: ClassVar[dict[str, str]] = {
        "anchor_scale": "no anchor scale (retinanet_* models only)",
        "head": "no head choice (retinanet_* models only; fcos_* heads always have GroupNorm)"}

    arch: str | None = Field(None, description="registered model name, e.g. shuffledet_0.25x (or give 'factory')")
    factory: str | None = Field(None, description="your own model: 'package.module:function' or './file.py:function' "
                                "(a path relative to the recipe's folder) returning a torchvision FCOS / RetinaNet "
                                "(wrapped automatically) or a detector on compressdet's contract; called with 'args' "
                                "plus num_classes / image_size / classes where its signature takes them (docs/detectors.md)")
    args: dict[str, Any] | None = Field(None, description="factory only: keyword arguments for the factory "
                                 "(plain YAML values: they are stored in the model file's arch)")
    box_bias_init: bool | None = Field(None, description="factory FCOS only: start the box-distance bias at one stride "
                                       "(true), keep the instance's (false), or auto (unset: only a fresh zero bias)")
    weights: str | None = Field(None, description="fcos_* / retinanet_*: ImageNet backbone weights, a torchvision "
                                "weight name (DEFAULT, IMAGENET1K_V1: from torchvision's cache, downloaded there when "
                                "online) or a local state-dict file; yolo*: your own Ultralytics .pt of that "
                                "architecture (a trusted file: Ultralytics pickles models; docs/detectors.md)")
    width: float | None = Field(None, gt=0, description="width multiplier for a non-standard width")
    pretrained: str | None = Field(None, description="local backbone checkpoint; never downloaded")
    dropout: float = Field(0.5, ge=0, lt=1, description="head dropout probability (seed: keep 0.5)")
    anchor_scale: float | None = Field(None, gt=0, description="retinanet_* only: anchor base size in strides "
                                       "(default 4, torchvision's, sized for COCO at 800 px; smaller objects "
                                       "want smaller anchors: `compressdet anchors RECIPE` measures the fit)")
    head: Literal["v1", "v2"] | None = Field(None, description="retinanet_* only: 'v2' is torchvision's "
                                             "retinanet_resnet50_fpn_v2 head (GroupNorm after each tower conv, GIoU "
                                             "box loss): it trains from scratch where v1 stalls; INT8 keeps its "
                                             "GroupNorm float and prune_head refuses it. Unset / 'v1': the plain head")

    @model_validator(mode="after")
    def _arch_or_factory(self) -> "ModelConfig":
        if (self.arch is None) == (self.factory is None):
            raise ValueError("give either 'arch' (a registered model) or 'factory' (your own), not "
                             + ("both" if self.arch else "neither"))
        if self.factory is None:
            given = [f for f in ("box_bias_init",) if getattr(self, f) is not None] + (["args"] if self.args else [])
            if given:
                raise ValueError(f"{', '.join(given)}: only with 'factory' (a registered arch takes its own fields)")
        else:
            given = [f for f in ("width", "pretrained", "weights", "anchor_scale", "head") if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: not with 'factory' (pass what your factory needs in 'args')")
        if self.weights and self.pretrained:
            raise ValueError("give 'weights' (torchvision's, fcos_* / retinanet_*) or 'pretrained' (a local "
                             "ShuffleNet checkpoint), not both")
        return self

    @property
    def label(self) -> str:
        """What the plan and messages call this model: its arch, or its factory."""
        return self.arch or f"factory {self.factory}"


class ClipConfig(_Strict):
    """Gradient-norm clipping before each optimizer step (issue #41)."""

    mode: Literal["per_tensor", "global", "none"] = Field(
        "per_tensor", description="per_tensor: each parameter's gradient to norm <= max_norm on its own (the seed's); "
        "global: all gradients scaled together (torch.nn.utils.clip_grad_norm_); none: no clip")
    max_norm: float = Field(1.0, gt=0, description="the norm clipped to")


class ScheduleConfig(_Strict):
    """Step-based SGD schedule; defaults are the seed's (METHOD.md section 4)."""

    steps: int = Field(40000, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="global batch, split across processes")
    lr: float = Field(0.02, gt=0, description="peak learning rate (cosine decay to lr_min)")
    lr_min: float = Field(0.0, ge=0, description="learning rate at the last step")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (on the parameters weight_decay_on names)")
    weight_decay_on: Literal["seed", "all"] = Field("seed", description="seed: head + adaptation only")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    clip: ClipConfig | None = Field(None, description="gradient clip {mode: per_tensor | global | none, max_norm}; "
                                    "not given: clip_grad_norm's per-tensor clip (the seed's, 1.0)")
    clip_grad_norm: float | None = Field(1.0, gt=0, description="legacy form of clip: a per-tensor clip at this norm "
                                         "(null: none); with 'clip' given it must stay at its default")
    eval_every: int = Field(500, gt=0, description="steps between evaluations on val (best checkpoint kept)")
    checkpoint_every: int = Field(500, gt=0, description="steps between resumable checkpoints")
    log_every: int = Field(20, gt=0, description="steps between loss logs (console, tensorboard)")
    amp: bool | Literal["auto", "bf16"] = Field(
        "auto", description="mixed precision. auto (or true, its older spelling): on CUDA, bf16 where the GPU has it "
        "else fp16 with loss scaling; off on a CPU. bf16: bf16 autocast on CUDA and on a CPU (fast only on CPUs with "
        "AVX512-BF16 / AMX; elsewhere it warns once that it will be slower). false: fp32 everywhere")
    channels_last: bool = Field(False, description="train in channels-last memory format")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_value(cls, v: Any) -> Any:
        # one message naming every accepted value (a bool | Literal union would report each branch apart)
        if isinstance(v, bool) or v in ("auto", "bf16"):
            return v
        raise ValueError(f"expected auto, true, false or bf16 (got {v!r})")

    @model_validator(mode="after")
    def _one_clip(self) -> "ScheduleConfig":
        # a resolved recipe carries the default clip_grad_norm beside clip: only another value conflicts
        if self.clip is not None and "clip_grad_norm" in self.model_fields_set and self.clip_grad_norm != 1.0:
            raise ValueError("give 'clip: {mode, max_norm}' or the legacy 'clip_grad_norm', not both")
        return self

    @property
    def clip_setting(self) -> "ClipConfig":
        """The clip in force: ``clip``, else ``clip_grad_norm`` as a per-tensor clip (null: none)."""
        if self.clip is not None:
            return self.clip
        if self.clip_grad_norm is None:
            return ClipConfig(mode="none")
        return ClipConfig(mode="per_tensor", max_norm=self.clip_grad_norm)


class ImitationConfig(_Strict):
    """Fine-grained feature imitation (METHOD.md section 3)."""

    weight: float = Field(1.0, ge=0, description="0 = the baseline without imitation")
    psi: float = Field(0.5, gt=0, le=1, description="mask threshold factor on each GT's max anchor IoU")
    normalizer: Literal["paper", "seed"] = Field("paper", description="paper: 2*N_p; seed: the seed code's")
    warmup_steps: int = Field(0, ge=0, description="steps without imitation at the start")
    cache_teacher_features: bool = Field(False, description="cache teacher maps (exact only without photometric/drift aug)")


class DistillConfig(_Strict):
    """One distillation method (``compressdet.losses.distill``): ``fgfi`` (the seed's fine-grained
    imitation, what ``imitation:`` means), ``pkd`` (Pearson-correlation feature imitation) or
    ``crosskd`` (the student's feature through the teacher's head). A list combines methods."""

    method: Literal["fgfi", "pkd", "crosskd"] = Field(description="the distillation method")
    weight: Annotated[float, Field(ge=0)] | Literal["auto"] | None = Field(
        None, description="this method's loss weight (0 switches it off); pkd: per FPN level, the levels' losses "
        "summed (before issue #41 the levels were averaged: an old pkd weight w on an FPN family is now w per "
        "level, 5x the strength); 'auto': set before training so the distillation gradient on the student's "
        "backbone + neck is auto_ratio times the detection loss's; not given: the method's default (pkd: 2 per "
        "level for FCOS, 10 for RetinaNet, as the reference configs, 1 for single-level ShuffleDet; fgfi, "
        "crosskd: 1)")
    auto_ratio: float = Field(1.0, gt=0, description="weight: auto: target ratio of the distillation loss's "
                              "gradient norm to the detection loss's on the student's backbone + neck (1.0 until "
                              "benchmarks/distill_methods.py --preset calibrated chooses it)")
    auto_batches: int = Field(4, gt=0, description="weight: auto: training batches the gradient ratio is measured on")
    warmup_steps: int = Field(0, ge=0, description="steps without this loss at the start")
    psi: float = Field(0.5, gt=0, le=1, description="fgfi: mask threshold factor on each GT's max anchor IoU")
    normalizer: Literal["paper", "seed"] = Field("paper", description="fgfi: paper 2*N_p; seed: the seed code's")
    tau: float = Field(1.0, gt=0, description="crosskd: temperature of the classification KD (1: the reference)")
    box_weight: float = Field(1.0, ge=0, description="crosskd: box (GIoU) term relative to the classification term "
                              "(paper variant: on top of the reference's own, FCOS 0.75 : 0.4)")
    variant: Literal["paper", "adapter"] | None = Field(
        None, description="crosskd: paper = the student's head-tower features at from_layer through the "
        "teacher's head from that layer on (the CrossKD authors' code); adapter = every FPN level through a 1x1 "
        "conv and the teacher's whole head (ShuffleDet's only variant); not given: paper where both models "
        "expose their head tower (FCOS, RetinaNet), else adapter")
    from_layer: int | None = Field(None, ge=0, description="crosskd paper: head-tower layer the student's "
                                   "features leave at (not given: 2 for FCOS, 3 for RetinaNet, as the reference)")
    align_scale: bool = Field(True, description="crosskd paper: match each channel's mean and std of the student's "
                              "tower features to the teacher's before its head (parameter-free, as the reference)")
    centerness: bool = Field(False, description="crosskd paper, FCOS: also distil centre-ness (BCE to the "
                             "teacher's; the reference does not)")

    #: fields that belong to one method (the others refuse them)
    METHOD_ONLY: ClassVar[dict[str, str]] = {"psi": "fgfi", "normalizer": "fgfi", "tau": "crosskd",
                                             "box_weight": "crosskd", "variant": "crosskd", "from_layer": "crosskd",
                                             "align_scale": "crosskd", "centerness": "crosskd"}

    @model_validator(mode="after")
    def _fields_of_method(self) -> "DistillConfig":
        wrong = [f for f in self.model_fields_set if self.METHOD_ONLY.get(f, self.method) != self.method]
        if wrong:
            raise ValueError(f"method '{self.method}' takes no {', '.join(sorted(wrong))} "
                             f"({', '.join(f'{f} is for {self.METHOD_ONLY[f]}' for f in sorted(wrong))})")
        auto_only = sorted({"auto_ratio", "auto_batches"} & self.model_fields_set)
        if auto_only and self.weight != "auto":
            raise ValueError(f"{', '.join(auto_only)} only apply with 'weight: auto'")
        paper_only = sorted({"from_layer", "align_scale", "centerness"} & self.model_fields_set)
        if paper_only and self.variant == "adapter":
            raise ValueError(f"{', '.join(paper_only)}: crosskd's paper variant only (variant is adapter)")
        return self

    @property
    def enabled(self) -> bool:
        """On unless its weight is 0 (``auto`` and the default are on)."""
        return not isinstance(self.weight, (int, float)) or self.weight > 0

    def to_yaml_dict(self) -> dict[str, Any]:
        """Its own method's fields only: a resolved recipe must load again with the strict loader."""
        skip = set() if self.weight == "auto" else {"auto_ratio", "auto_batches"}
        if self.variant == "adapter":
            skip |= {"from_layer", "align_scale", "centerness"}
        return {k: v for k, v in self.model_dump(mode="json").items()
                if self.METHOD_ONLY.get(k, self.method) == self.method and k not in skip}

    @classmethod
    def from_imitation(cls, imit: "ImitationConfig") -> "DistillConfig":
        return cls(method="fgfi", weight=imit.weight, warmup_steps=imit.warmup_steps, psi=imit.psi,
                   normalizer=imit.normalizer)


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, dict) else v


#: a stage's ``distill:`` field (train, prune, qat): a list, or one mapping meaning a one-item list
DistillList = Annotated[list[DistillConfig] | None, BeforeValidator(_one_or_many), Field(
    description="distillation methods (fgfi | pkd | crosskd), one weight each; a single mapping is a one-item "
    "list; replaces 'imitation' (which means fgfi)")]


def as_distill_list(spec: "ImitationConfig | list[DistillConfig] | None") -> list[DistillConfig]:
    """An ``imitation`` block (fgfi) or a ``distill`` list -> the methods with weight > 0 (an empty
    list is the baseline)."""
    if spec is None:
        return []
    methods = [DistillConfig.from_imitation(spec)] if isinstance(spec, ImitationConfig) else list(spec)
    return [m for m in methods if m.enabled]


def distill_methods(stage: Any) -> list[DistillConfig]:
    """The distillation a stage asks for: its ``distill`` list, or its ``imitation`` block as fgfi."""
    return as_distill_list(getattr(stage, "distill", None) or getattr(stage, "imitation", None))


class PostprocessConfig(_Strict):
    """Decoding of the head's output into detections (evaluation, bench, export, predict)."""

    score_thresh: float = Field(0.0, ge=0, le=1, description="drop detections scoring below this")
    nms_thresh: float = Field(0.4, gt=0, le=1, description="IoU above which NMS suppresses the lower-scoring box")
    topk_candidates: int = Field(64, gt=0, description="highest-scoring boxes kept per class before NMS")
    detections_per_class: int = Field(50, gt=0, description="detections kept per class after NMS")


class EvalConfig(_Strict):
    """How the stage's mAP is measured (checkpoint selection on val)."""

    metric: Literal["kitti", "coco"] | None = Field(
        None, description="kitti (official-devkit AP) or coco (AP@[.5:.95]); default follows data.format")
    protocol: Literal["official", "seed"] = Field("official", description="KITTI AP: the official devkit's, or the "
                                                  "seed code's variant (the seed's tables)")
    max_images: int | None = Field(None, gt=0, description="evaluate on the first N images only")
    batch_size: int = Field(8, gt=0, description="evaluation batch size")
    num_images_logged: int = Field(4, ge=0, description="detection PNGs written to tensorboard per evaluation")


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _check_teacher_imitation(stage: "StageConfig") -> None:
    """``teacher`` and ``imitation`` (or ``distill``) come together: one without the other is a
    recipe mistake (a named teacher that silently guides nothing, or a distillation loss with
    nothing to learn from)."""
    if "imitation" not in type(stage).model_fields:  # kinds that never imitate (ptq, export ...)
        return
    imit, distill = stage.imitation, getattr(stage, "distill", None)
    if imit is not None and distill:
        raise ValueError("give either 'imitation' (the seed's fgfi) or 'distill' (any methods), not both; "
                         "'imitation: {...}' is 'distill: {method: fgfi, ...}'")
    names = [m.method for m in (distill or [])]
    if len(set(names)) != len(names):
        raise ValueError(f"distill lists a method twice ({', '.join(names)}); give each method once, with one weight")
    if any(m.enabled for m in (distill or [])) and stage.teacher is None:
        raise ValueError("distill with weight > 0 needs 'teacher: <stage name>'")
    if imit is not None and imit.weight > 0 and stage.teacher is None:
        raise ValueError("imitation with weight > 0 needs 'teacher: <stage name>'")
    if stage.teacher is not None and imit is None and not distill:
        raise ValueError(f"'teacher: {stage.teacher}' is named but there is no 'imitation' block; add "
                         "'imitation: {weight: 1.0}' to imitate it (weight 0: the baseline) or drop 'teacher'")


class StageConfig(_Strict):
    """Fields every stage has. ``from`` and ``teacher`` name earlier stages."""

    name: str = Field(description="the stage's name: its folder in the run, what from/teacher refer to")
    kind: str
    from_: str | None = Field(None, alias="from", description="stage whose model this one starts from")
    teacher: str | None = Field(None, description="stage whose model guides this one")

    ref_fields: ClassVar[tuple[str, ...]] = ("from_", "teacher")
    requires: ClassVar[tuple[str, ...]] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _STAGE_NAME.match(v):
            raise ValueError("stage names are letters, digits, '_', '-', '.', not starting with a dot or dash")
        return v

    def references(self) -> list[tuple[str, str]]:
        """(field name as written in YAML, referenced stage) pairs."""
        out: list[tuple[str, str]] = []
        for f in self.ref_fields:
            v = getattr(self, f)
            key = "from" if f == "from_" else f
            if isinstance(v, str):
                out.append((key, v))
            elif isinstance(v, list):
                out.extend((f"{key}[{i}]", x) for i, x in enumerate(v))
        return out

    @model_validator(mode="after")
    def _required_refs(self) -> "StageConfig":
        for f in self.requires:
            if getattr(self, f) is None:
                key = "from" if f == "from_" else f
                raise ValueError(f"stage kind '{self.kind}' needs '{key}: <stage name>'")
        _check_teacher_imitation(self)
        return self


_SCHEMAS: dict[str, type[StageConfig]] = {}


def register_stage_schema(kind: str) -> Callable[[type[StageConfig]], type[StageConfig]]:
    """Register the config model of a stage kind. Raises on a duplicate kind (safer than warning)."""

    def deco(cls: type[StageConfig]) -> type[StageConfig]:
        if kind in _SCHEMAS and _SCHEMAS[kind] is not cls:
            raise ValueError(f"stage kind '{kind}' is already registered")
        _SCHEMAS[kind] = cls
        return cls

    return deco


def stage_schemas() -> dict[str, type[StageConfig]]:
    return dict(_SCHEMAS)


@register_stage_schema("train")
class TrainStage(StageConfig):
    """Train a detector; with ``teacher`` and ``imitation`` it is the paper's student."""

    kind: Literal["train"] = "train"
    model: ModelConfig | str | None = Field(None, description="inline model, a key of recipe.models, or an arch name")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    imitation: ImitationConfig | None = None
    distill: DistillList = None
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _model_or_from(self) -> "TrainStage":
        if self.model is None and self.from_ is None:
            raise ValueError("a train stage needs 'model' (what to build) or 'from' (a stage to continue)")
        return self


class PruneTarget(_Strict):
    """How much to prune: give one of macs, pruning_ratio, pruning_ratio_dict."""

    macs: float | None = Field(None, gt=0, lt=1, description="keep this fraction of the backbone MACs")
    pruning_ratio: float | None = Field(None, gt=0, lt=1, description="uniform channel ratio removed")
    pruning_ratio_dict: dict[str, float] = Field(default_factory=dict, description="per-module ratios")

    @model_validator(mode="after")
    def _one(self) -> "PruneTarget":
        if self.macs is None and self.pruning_ratio is None and not self.pruning_ratio_dict:
            raise ValueError("give one of macs, pruning_ratio, pruning_ratio_dict")
        return self


@register_stage_schema("prune")
class PruneStage(StageConfig):
    """Structured channel pruning with torch-pruning, then a fine-tune (with ``teacher`` + ``imitation``:
    imitating the teacher, adaptation layer rebuilt for the pruned width)."""

    kind: Literal["prune"] = "prune"
    requires: ClassVar[tuple[str, ...]] = ("from_",)
    target: PruneTarget = Field(default_factory=lambda: PruneTarget(macs=0.6),
                                description="how much to prune (a MACs budget or channel ratios)")
    importance: Literal["group_magnitude", "bn_scale", "taylor"] = Field(
        "group_magnitude", description="channel importance criterion (docs/pruning.md)")
    iterative_steps: int = Field(1, gt=0, description="prune -> fine-tune rounds")
    round_to: int | None = Field(None, gt=0, description="ShuffleDet: removed channels per group are a multiple "
                                 "of this, on top of what grouped convs and the shuffle require (default: no extra "
                                 "rounding); FCOS / RetinaNet: kept channels per group are a multiple of this "
                                 "(default 16, ONNX Runtime's AVX-512 channel block)")
    allocation: Literal["uniform", "latency"] = Field(
        "latency", description="how the MACs target is spread over channel groups: one ratio for all, or "
        "more from groups that save more CPU latency per MAC (stream, head input)")
    latency_weight_range: tuple[float, float] = Field(
        (0.5, 2.0), description="(lo, hi) clip of the latency allocation's per-group ratio multiplier, relative "
        "to the median group; wider = more speed from the same MACs, but the head input is cut harder")
    depthwise_align: int = Field(
        4, ge=1, description="a channel group with a depthwise conv keeps a multiple of this many channels (or "
        "stays unpruned): ONNX Runtime's x86 CPU kernels run depthwise convs blocked only at multiples of 4 "
        "(1 = no alignment)")
    ignored_layers: list[str] = Field(default_factory=list, description="module names never pruned")
    prune_head: float = Field(
        0.0, ge=0.0, lt=0.9, description="RetinaNet: also remove this fraction of the head towers' inner "
        "channels (shared by every level; the prediction convs stay; kept widths rounded like round_to), in "
        "the first round, on top of target, which stays the backbone's; 0: the head is left whole")
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(steps=2000, lr=0.005))
    imitation: ImitationConfig | None = None
    distill: DistillList = None
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _weight_range(self) -> "PruneStage":
        lo, hi = self.latency_weight_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"latency_weight_range must satisfy 0 < lo <= 1 <= hi, got [{lo}, {hi}]")
        return self


class QuantConfig(_Strict):
    """INT8 scheme of a qat / ptq stage (torchao PT2E, docs/quantization.md)."""

    backend: Literal["x86"] = Field("x86", description="the PT2E quantizer (x86: X86InductorQuantizer)")
    per_channel: bool = Field(True, description="per-channel weight scales (false: per-tensor)")
    activations: Literal["u8", "s8_symmetric"] = Field(
        "u8", description="u8: asymmetric uint8, fastest in ONNX Runtime on x86; s8_symmetric: int8 with zero "
        "point 0, the only activation scheme TensorRT's explicit quantization accepts")
    keep_head_float: bool = Field(True, description="the head's output and the decode stay float")
    head_weights: Literal["int8", "float"] = Field(
        "int8", description="with keep_head_float: int8 = int8 input and per-channel int8 weights, int32 "
        "accumulation, float output (no output scale; ONNX Runtime runs it as an integer matmul); float = an fp32 conv")
    head_int8: Literal["per_kind", "shared"] = Field(
        "per_kind", description="with keep_head_float false: one int8 output scale per output kind (class "
        "logits, confidence, box deltas) or one scale shared by all")
    float_stem: bool = Field(False, description="keep the 3-channel stem conv in fp32 (docs/quantization.md)")
    calibration_images: int = Field(64, gt=0, description="train images the observers calibrate on")
    quantizer: Literal["x86", "openvino"] = Field(
        "x86", description="where the int8 quantizers go: x86 = compressdet's placement for ONNX Runtime "
        "(X86InductorQuantizer); openvino = NNCF's placement for OpenVINO's CPU plugin (pip install "
        "compressdet[openvino]; ShuffleDet; the x86 placement settings above do not apply)")
    reduce_range: Literal["auto", True, False] = Field(
        "auto", description="7-bit activations, so no u8*s8 product pair saturates the int16 sums of CPUs "
        "without VNNI/AMX (ORT and OpenVINO INT8 there); auto = true exactly on such a CPU (u8 activations)")

    #: settings of the x86 placement that NNCF's openvino placement decides itself
    X86_ONLY: ClassVar[tuple[str, ...]] = ("activations", "keep_head_float", "head_weights", "head_int8",
                                           "float_stem", "per_channel")

    @model_validator(mode="after")
    def _placement(self) -> "QuantConfig":
        if self.quantizer == "openvino":
            # not their defaults (a run's saved recipe.yaml spells every field out)
            wrong = sorted(f for f in self.X86_ONLY if getattr(self, f) != type(self).model_fields[f].default)
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: settings of the x86 placement; quantizer openvino places "
                                 "the quantizers by NNCF's OpenVINO CPU config (remove them)")
        if self.reduce_range is True and self.activations == "s8_symmetric":
            raise ValueError("reduce_range: true with activations s8_symmetric: TensorRT's int8 does not saturate "
                             "(use auto or false)")
        return self


@register_stage_schema("qat")
class QatStage(StageConfig):
    """INT8 quantization-aware training (torchao PT2E), teacher still guiding."""

    kind: Literal["qat"] = "qat"
    requires: ClassVar[tuple[str, ...]] = ("from_",)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(steps=1000, lr=0.001))
    freeze_observers_step: int | None = Field(None, ge=0, description="default: 2/3 of the steps")
    freeze_bn_step: int | None = Field(None, ge=0, description="default: 1/2 of the steps")
    imitation: ImitationConfig | None = None
    distill: DistillList = None
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _freeze_steps(self) -> "QatStage":
        for f in ("freeze_observers_step", "freeze_bn_step"):
            v = getattr(self, f)
            if v is not None and v > self.schedule.steps:
                raise ValueError(f"{f}={v} is after the last step ({self.schedule.steps}); "
                                 f"use a value in [0, {self.schedule.steps}]")
        return self


@register_stage_schema("ptq")
class PtqStage(StageConfig):
    """INT8 post-training quantization (calibration only), the baseline QAT is compared with."""

    kind: Literal["ptq"] = "ptq"
    requires: ClassVar[tuple[str, ...]] = ("from_",)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    method: Literal["minmax", "histogram"] = Field("histogram", description="activation range observer (PT2E)")
    calibration_draw: Literal["first", "random"] = Field(
        "first", description="first: the first calibration_images train images in order; random: a draw of "
        "that many seeded by the recipe's seed (paired seeds in the benchmarks)")
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


@register_stage_schema("export")
class ExportStage(StageConfig):
    kind: Literal["export"] = "export"
    requires: ClassVar[tuple[str, ...]] = ("from_",)
    formats: list[Literal["onnx", "onnx-int8", "openvino", "openvino-int8", "tensorrt", "ultralytics"]] = Field(
        default_factory=lambda: ["onnx"], description="files to write: fp32 ONNX, INT8 QDQ ONNX, OpenVINO IR "
        "(fp32 / INT8), TensorRT engine, Ultralytics checkpoint (yolo models: YOLO(path))")
    opset: int = Field(18, ge=13, description=">= 18: torch.onnx dynamo exporter; 13-17: TorchScript exporter")
    calibration_images: int = Field(16, gt=0, description="images for static PTQ when the stage has no INT8 graph")
    dynamic_batch: bool = Field(False, description="a dynamic batch axis in the ONNX graph (default: batch 1)")
    with_postprocess: bool = Field(False, description="append the decode (boxes, scores) to the graph; "
                                   "default: the raw head output")
    tolerance: float = Field(1e-3, gt=0, description="max |ORT - PyTorch| allowed on the raw head output")
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)


@register_stage_schema("bench")
class BenchStage(StageConfig):
    """Measure every model stage of the run: MACs, params, latency per backend, mAP on val (or test)."""

    kind: Literal["bench"] = "bench"
    ref_fields: ClassVar[tuple[str, ...]] = ("from_", "teacher", "stages")
    stages: list[str] | None = Field(None, description="stages to measure (default: every model stage)")
    backends: list[Literal["torch", "ort", "ort-int8", "openvino", "openvino-f32", "openvino-int8", "tensorrt"]] = \
        Field(default_factory=lambda: ["torch", "ort"], description="runtimes each model is timed on (ort-int8: the "
              "INT8 QDQ graph in ONNX Runtime; openvino: OpenVINO's default precision, bf16 where the CPU has it)")
    runs: int = Field(50, gt=0, description="timed runs per model, backend and round")
    rounds: int = Field(3, gt=0, description="isolated-process timing: one fresh process per model and round")
    warmup: int = Field(5, ge=0, description="untimed runs before timing")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], description="batch sizes timed")
    threads: int | None = Field(None, gt=0, description="CPU threads per runtime (default: all cores)")
    val: bool = Field(True, description="measure each model's mAP (on ``split``)")
    split: Literal["val", "test"] = Field(
        "val", description="where the mAP column is measured: val, or the held-out test split for a final report "
                           "(nothing in a recipe selects on the bench's numbers)")
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


@register_stage_schema("deploy")
class DeployStage(StageConfig):
    """The fastest runtime and precision of the ``from`` stage's model that keeps its mAP (``compressdet deploy``):
    chosen artifact, deploy.json, deploy.md and chart in this stage's folder."""

    kind: Literal["deploy"] = "deploy"
    requires: ClassVar[tuple[str, ...]] = ("from_",)
    target: Literal["cpu", "cuda"] = Field("cpu", description="cpu: ORT and OpenVINO candidates; cuda: TensorRT fp16/INT8 too")
    image_size: tuple[int, int] | None = Field(None, description="deploy input size H, W (default: the model's)")
    max_map_drop: float = Field(0.5, description="largest mAP loss (points below PyTorch fp32) a candidate may have")
    split: Literal["val", "test"] = Field("val", description="where each candidate's mAP is measured")
    runs: int = Field(50, gt=0, description="timed runs per candidate and round")
    rounds: int = Field(3, gt=0, description="isolated-process timing: one fresh process per candidate and round")
    warmup: int = Field(5, ge=0, description="untimed runs before timing")
    threads: int | None = Field(None, gt=0, description="CPU threads per runtime (default: all cores)")
    calibration_images: int = Field(64, gt=0, description="train images NNCF calibrates its INT8 IR on")
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (min(v) <= 0 or v[0] % 16 or v[1] % 16):
            raise ValueError(f"image_size {list(v)}: both sides must be positive multiples of 16")
        return v


@register_stage_schema("model_file")
class ModelFileStage(StageConfig):
    """An existing model file (e.g. a teacher trained in another run) as this recipe's stage."""

    kind: Literal["model_file"] = "model_file"
    path: str = Field(description="model file written by compressdet.models.save_model, or asset:<name> for a "
                                  "model shipped with compressdet (compressdet/assets/CARD.md)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="expected sha256 of the file")


# --------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------
class Recipe(_Strict):
    name: str = Field(description="run folder name: runs/<name>/<run id>/")
    seed: int = Field(0, description="seeds weights, data order, augmentation and SynthKITTI generation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    data: DataConfig = Field(default_factory=DataConfig)
    models: dict[str, ModelConfig] = Field(default_factory=dict, description="named models stages can refer to")
    stages: list[Any] = Field(min_length=1, description="the stages, run in order; each a mapping with name and "
                              "kind (its fields: the stage kinds below)")
    source: str | None = Field(None, exclude=True, description="file the recipe came from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _STAGE_NAME.match(v):
            raise ValueError("recipe names are letters, digits, '_', '-', '.', not starting with a dot or dash")
        return v

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def resolve_model(self, stage: StageConfig) -> ModelConfig | None:
        """Resolve a stage's ``model`` (inline, key of ``models``, or bare arch name)."""
        m = getattr(stage, "model", None)
        if isinstance(m, str):
            return self.models.get(m) or ModelConfig(arch=m)
        return m

    def advisories(self) -> list[str]:
        """Valid but probably unintended settings, one line each (printed by ``recipe check`` and
        ``run``; they never stop a run)."""
        h, w = self.data.image_size
        fpn = sorted({m.arch for s in self.stages if (m := self.resolve_model(s)) is not None
                      and (m.arch or "").startswith(("fcos_", "retinanet_"))})
        out = []
        if fpn and (h % 128 or w % 128):
            out.append(f"data.image_size {h}x{w}: a side that is not a multiple of 128 gives {', '.join(fpn)} short "
                       "P5-P7 prior strides (torchvision's AnchorGenerator): far priors sit off their features; "
                       "sides that are multiples of 128 avoid it (docs/detectors.md)")
        named = {(m.arch, m.weights) for s in self.stages if (m := self.resolve_model(s)) is not None and m.arch
                 and m.weights and re.match(r"^[A-Z][A-Z0-9_]*$", m.weights)}
        for arch, weights in sorted(named):
            from .models import ModelError
            from .models.torchvision_det import weights_cache_path

            try:
                _, _, cached = weights_cache_path(arch.split("_", 1)[1], weights, f"{arch}: model.weights")
            except ModelError:  # refused by the loader with the recipe line
                continue
            if not cached.is_file():
                out.append(f"{arch}: model.weights {weights}: {cached.name} is not in torchvision's cache yet; the run "
                           f"downloads it there (offline: place it at {cached})")
        return out

    def to_yaml_dict(self, *, used_only: bool = False) -> dict[str, Any]:
        """The recipe as plain data (``used_only``: without the data fields its format does not read,
        which load back as their defaults)."""
        d = self.model_dump(mode="json", by_alias=True, exclude={"source"})
        if used_only:
            for f in self.data.unused_fields():
                d["data"].pop(f, None)
        d["stages"] = [s.model_dump(mode="json", by_alias=True) for s in self.stages]
        for dumped, stage in zip(d["stages"], self.stages):
            if getattr(stage, "distill", None):
                dumped["distill"] = [m.to_yaml_dict() for m in stage.distill]
        models = [*(d.get("models") or {}).values(), *(s.get("model") for s in d["stages"])]
        for m in models:  # a factory file by its absolute path: the copy in a run folder loads from anywhere
            if isinstance(m, dict) and m.get("factory"):
                from .models._factory import parse_factory

                spec = parse_factory(m["factory"], recipe_dir(self))
                m["factory"] = spec.text if spec.is_file else m["factory"]
        return d


# --------------------------------------------------------------------------------------------
# Loading with file:line error messages
# --------------------------------------------------------------------------------------------
Path_ = tuple[Any, ...]


class _Errors:
    def __init__(self, source: str, lines: dict[Path_, int], overridden: dict[Path_, str]):
        self.source, self.lines, self.overridden, self.items = source, lines, overridden, []

    def where(self, loc: Path_) -> str:
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.overridden:
                return f"{self.source}: override '{self.overridden[loc[:n]]}'"
            if loc[:n] in self.lines:
                return f"{self.source}:{self.lines[loc[:n]]}"
        return self.source

    def add(self, loc: Path_, msg: str) -> None:
        self.items.append(_printable(f"{self.where(loc)}: {_fmt_loc(loc)}: {msg}"))

    def add_pydantic(self, exc: ValidationError, prefix: Path_, model: type[BaseModel] | None) -> None:
        for e in exc.errors(include_url=False):
            loc = prefix + tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
            loc = tuple("from" if p == "from_" else p for p in loc)
            if e["type"] == "extra_forbidden":
                msg = f"unknown key '{loc[-1]}'" + _suggest(str(loc[-1]), _valid_keys(model, e["loc"][:-1]))
            elif e["type"] == "missing":
                msg = "required field is missing"
            else:
                msg = e["msg"].removeprefix("Value error, ")
                if e["type"] not in ("value_error", "assertion_error") and "input" in e:
                    msg += f" (got {e['input']!r})"
            self.add(loc, msg)

    def raise_if_any(self) -> None:
        if self.items:
            raise RecipeError("\n".join(dict.fromkeys(map(one_line, self.items))))  # one line per problem


_UNION_TAGS = {"ModelConfig", "str", "function-after[_root(), DataConfig]"}


def _valid_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names accepted at ``loc`` inside ``model`` (for 'did you mean' hints)."""
    cur: Any = model
    for part in loc:
        if cur is None or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return []
        if isinstance(part, int):
            continue
        f = cur.model_fields.get(part) or next((v for v in cur.model_fields.values() if v.alias == part), None)
        if f is None:
            return []
        cur = _model_in(f.annotation)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return [f.alias or k for k, f in cur.model_fields.items() if k != "source"]
    return []


def _model_in(tp: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in getattr(tp, "__args__", ()) or ():
        m = _model_in(arg)
        if m is not None:
            return m
    return None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if choices:
        return f" (valid keys: {', '.join(choices)})"
    return ""


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict[Path_, str]:
    """Apply ``dotted.key=value`` overrides in place; return {path: override text} for messages.

    A path part may be a list index (``stages.1.schedule``) or, under ``stages``, a stage name
    (``stages.student.schedule.steps=200``). Values are parsed as YAML (``true``, ``[1, 2]``, ``0.5``).
    """
    done: dict[Path_, str] = {}
    for text in overrides:
        shown = _printable(text)  # a message stays one line whatever the shell passed
        if "=" not in text:
            raise RecipeError(f"{source}: override '{shown}': expected dotted.key=value")
        key, raw = text.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if not key.strip() or any(not p for p in parts):
            raise RecipeError(f"{source}: override '{shown}': empty key part in '{_printable(key)}'")
        try:
            value = safe_load_unique(raw) if raw.strip() else None
        except DuplicateKeyError as e:
            raise RecipeError(f"{source}: override '{shown}': value has a duplicate key "
                              f"'{_printable(str(e.path[-1]))}'") from None
        except yaml.YAMLError as e:
            problem = (getattr(e, "problem", None) or str(e)).strip().splitlines() or ["unreadable"]
            raise RecipeError(f"{source}: override '{shown}': value is not valid YAML "
                              f"({_printable(problem[0])})") from None
        text = shown
        cur: Any = data
        path: list[Any] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(cur, list):
                if re.fullmatch(r"-?[0-9]+", part):
                    idx = int(part)
                elif path == ["stages"]:
                    names = [s.get("name") for s in cur if isinstance(s, dict)]
                    if part not in names:
                        raise RecipeError(_printable(f"{source}: override '{text}': stages.{part}: no stage named "
                                          f"'{part}'{_did_you_mean(part, [str(n) for n in names if n])}"))
                    idx = names.index(part)
                else:
                    raise RecipeError(_printable(f"{source}: override '{text}': {_fmt_loc(tuple(path))}: is a list, "
                                      f"'{part}' is not an index"))
                if not -len(cur) <= idx < len(cur):
                    raise RecipeError(_printable(f"{source}: override '{text}': {_fmt_loc(tuple(path))}: index {idx} "
                                      f"out of range (list has {len(cur)} items)"))
                idx %= len(cur)
                path.append(idx)
                if last:
                    cur[idx] = value
                else:
                    cur = cur[idx]
            elif isinstance(cur, dict):
                path.append(part)
                if last:
                    cur[part] = value
                else:
                    if cur.get(part) is None:
                        cur[part] = {}
                    cur = cur[part]
            else:
                raise RecipeError(_printable(f"{source}: override '{text}': {_fmt_loc(tuple(path))}: is a value "
                                  f"({cur!r}), cannot set '{part}' inside it"))
        done[tuple(path)] = text
    return done


def _printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x85``): a key or an
    override may hold them, and an error is one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | None = None,
                 check_paths: bool = True) -> Recipe:
    """Validate recipe text; raises :class:`RecipeError` naming file:line: field: problem."""
    try:
        root = compose_unique(text)
        lines = line_map(root)
        data = construct(root)
    except DuplicateKeyError as e:
        raise RecipeError(f"{source}:{e.line}: {_fmt_loc(e.path)}: duplicate key (first at line {e.first_line})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = (getattr(e, "problem", None) or str(e)).strip().splitlines() or ["unreadable"]
        raise RecipeError(f"{source}{line}: invalid YAML: {problem[0]}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}:1: <top>: a recipe is a mapping with name, data and stages "
                          f"(got {type(data).__name__})")
    overridden = apply_overrides(data, overrides or [], source)
    errs = _Errors(source, lines, overridden)

    raw_stages = data.get("stages")
    try:
        top = Recipe.model_validate({**data, "source": source})
    except ValidationError as e:
        errs.add_pydantic(e, (), Recipe)
        top = None

    stages: list[StageConfig] = []
    if isinstance(raw_stages, list):
        for i, raw in enumerate(raw_stages):
            if not isinstance(raw, dict):
                errs.add(("stages", i), f"a stage is a mapping with name and kind (got {raw!r})")
                continue
            kind = raw.get("kind")
            if kind is None:
                errs.add(("stages", i), "required field 'kind' is missing "
                                        f"(one of: {', '.join(sorted(_SCHEMAS))})")
                continue
            schema = _SCHEMAS.get(kind) if isinstance(kind, str) else None  # a list or mapping is no kind
            if schema is None:
                errs.add(("stages", i, "kind"), f"unknown stage kind '{kind}'"
                         f"{_did_you_mean(str(kind), sorted(_SCHEMAS))} (known: {', '.join(sorted(_SCHEMAS))})")
                continue
            try:
                stages.append(schema.model_validate(raw))
            except ValidationError as e:
                errs.add_pydantic(e, ("stages", i), schema)
    errs.raise_if_any()
    assert top is not None
    top.stages = stages
    _check_references(top, errs)
    _check_models(top, errs)
    if check_paths:
        _check_paths(top, errs)
        errs.raise_if_any()
        _check_factories(top, errs)
    errs.raise_if_any()
    return top


def _check_references(recipe: Recipe, errs: _Errors) -> None:
    index: dict[str, int] = {}
    for i, s in enumerate(recipe.stages):
        if s.name in index:
            errs.add(("stages", i, "name"), f"duplicate stage name '{s.name}' (first used by stages[{index[s.name]}])")
        else:
            index[s.name] = i
    if len(index) != len(recipe.stages):
        return  # references are ambiguous until names are unique
    names = list(index)
    graph = {s.name: [ref for _, ref in s.references()] for s in recipe.stages}
    # cycles first: they are the clearer message when a forward reference is part of one
    in_cycle: set[str] = set()
    for start in names:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, []):
                if nxt == start:
                    if start not in in_cycle:
                        in_cycle.update(trail)
                        i = index[start]
                        field = next((f for f, r in recipe.stages[i].references() if r == (trail + [start])[1]),
                                     "name")
                        errs.add(("stages", i, field.split("[")[0]), "reference cycle: " + " -> ".join(trail + [start]))
                elif nxt in graph and nxt not in trail:
                    stack.append((nxt, trail + [nxt]))
    for i, s in enumerate(recipe.stages):
        for field, ref in s.references():
            base = field.split("[")[0]
            if ref not in index:
                errs.add(("stages", i, base), f"no stage named '{ref}'{_did_you_mean(ref, names)}")
            elif s.name not in in_cycle and index[ref] >= i:
                errs.add(("stages", i, base), f"'{ref}' is defined later (stages[{index[ref]}]); "
                                              "a stage can only use stages listed before it")


def _check_models(recipe: Recipe, errs: _Errors) -> None:
    try:
        from .models import list_models
    except ImportError:  # model registry not importable: nothing to check against
        return
    known = list_models()
    if not known:
        return
    checks: list[tuple[Path_, str]] = [(("models", k, "arch"), m.arch) for k, m in recipe.models.items() if m.arch]
    for i, s in enumerate(recipe.stages):
        m = getattr(s, "model", None)
        if isinstance(m, ModelConfig):
            if m.arch:
                checks.append((("stages", i, "model", "arch"), m.arch))
        elif isinstance(m, str) and m not in recipe.models:
            checks.append((("stages", i, "model"), m))
    from .models.yolo import EXTRA, YOLO_MODELS, ultralytics_available  # imports no Ultralytics

    for loc, arch in checks:
        if arch not in known:
            errs.add(loc, f"unknown model '{arch}'{_did_you_mean(arch, known)} (known: {', '.join(known)})")
        elif arch in YOLO_MODELS and not ultralytics_available():
            errs.add(loc, f"'{arch}' needs Ultralytics, which is not installed: pip install '{EXTRA}' "
                     "(AGPL-3.0: see docs/detectors.md)")
    blocks = [(("models", k), m) for k, m in recipe.models.items()]
    blocks += [(("stages", i, "model"), s.model) for i, s in enumerate(recipe.stages)
               if isinstance(getattr(s, "model", None), ModelConfig)]
    for loc, m in blocks:
        if m.arch is None:
            continue
        if m.arch in YOLO_MODELS:
            pass  # model.weights: the user's Ultralytics .pt (its existence: _check_paths)
        elif m.weights and not m.arch.startswith(("fcos_", "retinanet_")):
            errs.add((*loc, "weights"), f"'{m.arch}' takes no torchvision weights (fcos_* / retinanet_* only; "
                     "ShuffleDet's backbone checkpoint is 'pretrained'; yolo*: an Ultralytics .pt)")
        elif m.weights and re.match(r"^[A-Z][A-Z0-9_]*$", m.weights) and m.arch in known:
            from .models import ModelError
            from .models.torchvision_det import weights_cache_path

            try:
                weights_cache_path(m.arch.split("_", 1)[1], m.weights, f"'{m.arch}'")
            except ModelError as e:
                errs.add((*loc, "weights"), str(e))
        if m.arch.startswith("retinanet_"):
            continue
        for field, lacks in ModelConfig.RETINANET_ONLY.items():
            if getattr(m, field) is not None:
                errs.add((*loc, field), f"'{m.arch}' has {lacks}")
    _check_yolo_stages(recipe, errs, YOLO_MODELS)


#: the stages a yolo model cannot go through yet (issue #45), and why
_YOLO_UNSUPPORTED: dict[str, str] = {}
#: crosskd fields that mean its paper variant (a head tower), which yolo has not
_PAPER_ONLY = {"from_layer", "align_scale", "centerness"}


def _check_yolo_stages(recipe: Recipe, errs: _Errors, yolo_models: Any) -> None:
    """Refuse up front, before any training, a stage a yolo model (its own or its 'from' chain's) cannot run."""
    by_name = {s.name: s for s in recipe.stages}

    def arch_of(stage: Any, depth: int = 0) -> str | None:
        m = recipe.resolve_model(stage)
        if m is not None:
            return m.arch
        src = by_name.get(getattr(stage, "from_", None) or "")
        return arch_of(src, depth + 1) if src is not None and depth < len(by_name) else None

    h, w = recipe.data.image_size
    size_said = False
    for i, s in enumerate(recipe.stages):
        why = _YOLO_UNSUPPORTED.get(s.kind)
        arch = arch_of(s)
        if "ultralytics" in (getattr(s, "formats", None) or ()) and arch is not None and arch not in yolo_models:
            errs.add(("stages", i, "formats"), f"stage '{s.name}': format 'ultralytics' is for yolo models "
                     f"({', '.join(yolo_models)}); its model is '{arch}'")
        if arch not in yolo_models:
            continue
        if (h % 32 or w % 32) and not size_said:
            size_said = True
            errs.add(("data", "image_size"), f"{h}x{w}: yolo models ('{arch}', stage '{s.name}') need both sides "
                     "multiples of 32 (the stride of P5)")
        if why:
            errs.add(("stages", i, "kind"), f"stage '{s.name}' ({s.kind}) cannot run on the yolo model '{arch}': {why}")
        elif any(d.method == "crosskd" and (d.variant == "paper" or _PAPER_ONLY & d.model_fields_set)
                 for d in distill_methods(s)):
            errs.add(("stages", i, "distill"), f"stage '{s.name}': crosskd on a yolo student ('{arch}') is the adapter "
                     "variant (P3-P5 through the teacher's Detect branches; no head tower to enter part-way): "
                     "drop variant: paper / from_layer / align_scale / centerness")


def recipe_dir(recipe: Recipe) -> Path:
    """The folder relative factory paths start from: the recipe file's, else the current one."""
    src = Path(recipe.source) if recipe.source and not recipe.source.startswith("<") else None
    return src.parent if src is not None else Path(".")


#: what a detector other than ShuffleDet and a (wrapped) torchvision FCOS/RetinaNet cannot go through
_CUSTOM_UNSUPPORTED = {
    "prune": "channel pruning knows ShuffleDet's and torchvision FCOS/RetinaNet's structure only",
    "qat": "INT8 quantization captures ShuffleDet and torchvision FCOS/RetinaNet only",
    "ptq": "INT8 quantization captures ShuffleDet and torchvision FCOS/RetinaNet only",
}


def _stage_refusal(stage: Any, model: Any, teacher: Any) -> str | None:
    """Why ``stage`` cannot run on ``model`` (a detector some factory built), or None."""
    from .models import ShuffleDet, TorchvisionDetector

    def known(m: Any) -> bool:
        return isinstance(m, (ShuffleDet, TorchvisionDetector))

    if known(model):
        return None  # every stage kind runs on a wrapped torchvision FCOS / RetinaNet (docs/detectors.md)
    if stage.kind in _CUSTOM_UNSUPPORTED:
        return _CUSTOM_UNSUPPORTED[stage.kind]
    if stage.kind == "export":
        if getattr(stage, "with_postprocess", False) and not hasattr(model, "detection_graph"):
            return "with_postprocess needs the model's detection_graph (in-graph decode); it has none"
        int8 = sorted(set(getattr(stage, "formats", [])) & {"onnx-int8", "openvino-int8"})
        if int8:
            return f"{', '.join(int8)} need an INT8 model (qat / ptq), which this model cannot have"
    if stage.kind == "bench" and set(getattr(stage, "backends", [])) & {"ort-int8", "openvino-int8"}:
        return "int8 backends need a qat / ptq stage, which this model cannot have"
    if any(d.method == "crosskd" for d in distill_methods(stage)) and not (teacher is not None and known(teacher)):
        return "distill crosskd runs the student's features through the teacher's head: ShuffleDet or FPN families only"
    return None


def _try_detector(model: Any, image_size: tuple[int, int]) -> None:
    """One eval forward + decode and one training loss on a dummy batch: a broken model fails here,
    in ``recipe check``, not minutes into a run."""
    import torch

    h, w = image_size
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, h, w))
        model.postprocessor(None)(out)
    model.train()
    out = model(torch.zeros(2, 3, h, w))
    target = {"boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2]]), "labels": torch.tensor([0])}
    total = model.loss(out, [target, target])["total"]
    if not torch.isfinite(total):
        raise ValueError(f"the training loss on a dummy batch is {float(total)}")


def _check_factories(recipe: Recipe, errs: _Errors) -> None:
    """Import every factory, build its model once on a dummy batch, and refuse up front the stages
    it cannot run (each naming the stage and why)."""
    from .models._factory import _one_line, build_from_factory

    blocks = [(("models", k), m) for k, m in recipe.models.items()]
    blocks += [(("stages", i, "model"), s.model) for i, s in enumerate(recipe.stages)
               if isinstance(getattr(s, "model", None), ModelConfig)]
    built: dict[int, Any] = {}
    for loc, m in blocks:
        if m.factory is None or id(m) in built:
            continue
        try:
            model = build_from_factory(m.factory, m.args, image_size=recipe.data.image_size,
                                       classes=recipe.data.classes, box_bias_init=m.box_bias_init,
                                       base_dir=recipe_dir(recipe))
        except UserError as e:
            errs.add((*loc, "factory"), str(e))
            continue
        try:
            _try_detector(model, tuple(recipe.data.image_size))
        except Exception as e:  # noqa: BLE001 - the user's model: one line naming it
            errs.add((*loc, "factory"), f"the model of '{m.factory}' does not run on a dummy "
                     f"{recipe.data.image_size[0]}x{recipe.data.image_size[1]} batch: {_one_line(e)}")
            continue
        built[id(m)] = model
    if not built:
        return
    by_name = {s.name: s for s in recipe.stages}

    def model_of(stage: Any, depth: int = 0) -> Any:
        m = recipe.resolve_model(stage)
        if m is not None:
            return built.get(id(m))
        src = by_name.get(getattr(stage, "from_", None) or "")
        return model_of(src, depth + 1) if src is not None and depth < len(by_name) else None

    for i, s in enumerate(recipe.stages):
        model = model_of(s)
        if model is None:
            continue
        teacher = by_name.get(getattr(s, "teacher", None) or "")
        why = _stage_refusal(s, model, model_of(teacher) if teacher is not None else None)
        if why:
            errs.add(("stages", i, "kind"), f"stage '{s.name}' ({s.kind}) cannot run on the model of "
                     f"'{model.arch.get('factory')}': {why}")


def _check_paths(recipe: Recipe, errs: _Errors) -> None:
    d = recipe.data
    if d.format == "kitti" and d.root:
        root = Path(d.root)
        if not root.is_dir():
            from .data.verify import KITTI_HOWTO

            errs.add(("data", "root"), f"folder '{d.root}' does not exist (put KITTI there or override "
                     f"data.root=PATH); to get KITTI: {KITTI_HOWTO.replace('ROOT', d.root)}")
            return
        for field in ("train_split", "val_split"):
            p = root / getattr(d, field)
            if not p.is_file():
                errs.add(("data", field), f"split file '{p}' does not exist")
    if d.format == "synth" and d.synth.layouts and not Path(d.synth.layouts).is_dir():
        errs.add(("data", "synth", "layouts"), f"folder '{d.synth.layouts}' does not exist")
    for i, s in enumerate(recipe.stages):
        m = recipe.resolve_model(s)
        if m is not None and m.pretrained and not Path(m.pretrained).is_file():
            errs.add(("stages", i, "model", "pretrained"), f"file '{m.pretrained}' does not exist")
        if m is not None and m.weights and not re.match(r"^[A-Z][A-Z0-9_]*$", m.weights) and not Path(m.weights).is_file():
            errs.add(("stages", i, "model", "weights"), f"file '{m.weights}' does not exist (a torchvision weight "
                     "name is upper case, e.g. DEFAULT or IMAGENET1K_V1)")


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True) -> Recipe:
    """Read and validate a recipe file (safe YAML loader), applying ``dotted.key=value`` overrides."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.__class__.__name__})") from None
    return parse_recipe(text, source=str(path), overrides=overrides, check_paths=check_paths)
