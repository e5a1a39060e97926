"""Ultralytics YOLO (YOLOv8 / YOLO11 detection) on the detector contract (issue #45).

The user's own Ultralytics install does the work, imported here only, and only when a ``yolo*``
model is built (``import compressdet`` never imports it; extra ``compressdet[ultralytics]``).
Ultralytics is AGPL-3.0: nothing of it is vendored; see docs/detectors.md for what that means.
What is reused, not rewritten: the network (``DetectionModel`` built from Ultralytics' shipped model
YAMLs, ``nc`` = the data's classes, no weights downloaded), the loss (``v8DetectionLoss``: task-aligned
assignment, BCE, CIoU + DFL, Ultralytics' default gains) and the decode (``Detect._inference``: DFL +
``dist2bbox``). What the adapter adds:

- input: compressdet feeds BGR minus ``MEAN_BGR``; the model turns it into Ultralytics' RGB / 255 in
  its first op, so its weights stay Ultralytics' (a user's ``.pt`` loads as it is, and a model trained
  here goes back to Ultralytics unchanged: :func:`save_ultralytics`);
- raw outputs ``(box_dist [N, 4*reg_max, K], cls_logits [N, C, K])`` (Detect's ``forward_head``, ``K``
  the points of P3-P5, level-major): what training, export and bench see; decode stays float, outside;
- feature taps: the neck outputs the Detect head reads (P3-P5, strides 8-32);
- postprocess: Ultralytics' decode, then per level the best ``topk_candidates`` (point, class) pairs,
  torchvision's per-class NMS and the recipe's caps, as the other families.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..conventions import MEAN_BGR
from ._registry import ModelError, register_model
from .contract import GlobalCountLoss, TapInfo, outputs_float, postprocess_kwargs

__all__ = ["YoloDetector", "YOLO_MODELS", "EXTRA", "ultralytics_available", "build_yolo", "save_ultralytics",
           "load_ultralytics_checkpoint"]

#: registry name -> the Ultralytics model YAML it is built from (shipped with Ultralytics)
YOLO_MODELS = {"yolov8n": "yolov8n.yaml", "yolov8s": "yolov8s.yaml", "yolo11n": "yolo11n.yaml",
               "yolo11s": "yolo11s.yaml"}
EXTRA = "compressdet[ultralytics]"
OUTPUTS = ("box_dist", "cls_logits")
CENTRE_RADIUS = 1.0  # distill_mask: a point within this many strides of a box centre is near it


def ultralytics_available() -> bool:
    """Whether Ultralytics can be imported (without importing it)."""
    return importlib.util.find_spec("ultralytics") is not None


def _ultralytics(what: str = "yolo models") -> Any:
    """Import Ultralytics offline, with its settings file outside the user's home.

    Ultralytics writes ``settings.json`` into its config folder on import and checks the network;
    unless the user set them, ``YOLO_OFFLINE=1`` (no network checks, no telemetry),
    ``YOLO_CONFIG_DIR`` (a per-user folder under the temp dir) and ``YOLO_VERBOSE=False``.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "YOLO_CONFIG_DIR" not in os.environ:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        os.environ["YOLO_CONFIG_DIR"] = str(Path(tempfile.gettempdir()) / f"compressdet-ultralytics-{uid}")
    try:
        import ultralytics
    except ImportError:
        raise ModelError(f"{what} need Ultralytics: pip install '{EXTRA}' (AGPL-3.0, see docs/detectors.md)") from None
    _unpatch_pil()
    return ultralytics


def _unpatch_pil() -> None:
    """Give PIL its own ``Image.open`` back: Ultralytics replaces it on import with a wrapper that pip-installs
    pi-heif the first time a file is not an image PIL knows; compressdet downloads nothing at run time and
    reports such a file as a DataError (``data.images``)."""
    import sys

    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = patches._image_open


def _detect_class() -> type:
    from ultralytics.nn.modules.head import Detect

    return Detect


class YoloDetector(nn.Module):
    """An Ultralytics ``DetectionModel`` (held as ``.net``) on compressdet's detector contract.

    Args:
        net: the Ultralytics detection model (Detect head; not an end-to-end one).
        image_size: ``(H, W)`` model input, multiples of 32 (P5's stride).
        arch: the JSON dict that rebuilds it (``name``, ``cfg`` = the model YAML as a dict).
    """

    family = "yolo"
    export_outputs = OUTPUTS

    def __init__(self, net: nn.Module, *, image_size: Sequence[int], arch: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        head = net.model[-1]
        if not isinstance(head, _detect_class()) or getattr(head, "one2one_cv2", None) is not None:
            raise ModelError(f"{arch.get('name')}: only Ultralytics detection models with a Detect head (YOLOv8 / "
                             "YOLO11 style, not end-to-end ones) are supported")
        h, w = (int(v) for v in image_size)
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ModelError(f"image_size {h}x{w}: yolo models need both sides positive multiples of 32 "
                             "(the stride of P5)")
        self.image_size = (h, w)
        self.num_classes = int(head.nc)
        self.arch = dict(arch)
        # BGR minus mean -> RGB / 255; not state: the state dict stays Ultralytics' (prefix "net.")
        self.register_buffer("_mean", torch.tensor(MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------- parts
    @property
    def head(self) -> nn.Module:
        """Ultralytics' Detect module (the last layer)."""
        return self.net.model[-1]

    def to_ultralytics_input(self, x: Tensor) -> Tensor:
        """compressdet's input (BGR minus mean) as Ultralytics feeds its models (RGB in [0, 1])."""
        return (x + self._mean.to(x.dtype))[:, [2, 1, 0]] / 255.0

    def _levels(self, x: Tensor) -> list[Tensor]:
        """The neck outputs the Detect head reads (P3-P5), as ``DetectionModel._predict_once`` routes them."""
        y: list[Tensor | None] = []
        layers = self.net.model
        for m in layers[:-1]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.net.save else None)
        f = layers[-1].f
        return [x if j == -1 else y[j] for j in (f if isinstance(f, list) else [f])]

    def _head(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        d = self.head.forward_head(feats, **self.head.one2many)
        return d["boxes"], d["scores"]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[N, 3, H, W]`` (BGR minus mean) -> ``(box_dist [N, 4*reg_max, K], cls_logits [N, C, K])``."""
        return self._head(self._levels(self.to_ultralytics_input(x)))

    def forward_with_features(self, x: Tensor) -> tuple[tuple[Tensor, Tensor], list[Tensor]]:
        """``(raw outputs, [P3, P4, P5])``: the neck outputs are what distillation imitates."""
        feats = self._levels(self.to_ultralytics_input(x))
        return self._head(feats), feats

    # ------------------------------------------------------------------------------- geometry
    def strides(self) -> list[int]:
        return [int(s) for s in self.head.stride.tolist()]

    def level_shapes(self) -> list[tuple[int, int]]:
        H, W = self.image_size
        return [(H // s, W // s) for s in self.strides()]

    def _placeholders(self, n: int = 1, device: Any = None, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        """Empty tensors of each level's shape: Ultralytics' anchors and loss read only the shapes."""
        return [torch.empty(n, 0, h, w, device=device, dtype=dtype) for h, w in self.level_shapes()]

    def priors(self, device: torch.device | str | None = None) -> Tensor:
        """The head's points as one-stride boxes: ``[K, 4]`` xyxy input px (Ultralytics' ``make_anchors``)."""
        from ultralytics.utils.tal import make_anchors

        pts, st = make_anchors(self._placeholders(device=device), self.strides(), 0.5)
        c, half = pts * st, st / 2
        return torch.cat((c - half, c + half), 1)

    def feature_taps(self) -> list[TapInfo]:
        """One tap per Detect input (P3-P5); channels read from the head's first convs (right after pruning)."""
        chans = [int(seq[0].conv.in_channels) for seq in self.head.cv2]
        return [TapInfo(f"p{int(math.log2(s))}", c, s) for c, s in zip(chans, self.strides())]

    @property
    def feature_channels(self) -> int:
        return self.feature_taps()[0].channels

    # ------------------------------------------------------------------------------- loss
    def build_loss(self) -> nn.Module:
        """Ultralytics' ``v8DetectionLoss`` as a module: ``loss(outputs, targets) -> {box, cls, dfl, total}``."""
        return YoloLoss(self)

    def _criterion(self, device: torch.device) -> Any:
        cache = self.__dict__.setdefault("_criteria", {})
        if device not in cache:
            from ultralytics.cfg import get_cfg
            from ultralytics.utils.loss import v8DetectionLoss

            if not hasattr(self.net, "args") or isinstance(self.net.args, dict):
                self.net.args = get_cfg(overrides={k: v for k, v in (getattr(self.net, "args", None) or {}).items()
                                                   if k in ("box", "cls", "dfl")})
            crit = v8DetectionLoss(self.net)
            crit.device = device
            crit.bbox_loss = crit.bbox_loss.to(device)
            crit.proj = crit.proj.to(device)
            cache[device] = crit
        return cache[device]

    def loss(self, outputs: Sequence[Tensor], targets: list[dict[str, Any]], *,
             with_count: bool = False) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
        """Ultralytics' detection loss on ``(raw outputs, compressdet targets)``: ``box`` (CIoU), ``cls`` (BCE),
        ``dfl`` with Ultralytics' default gains (7.5, 0.5, 1.5), and ``total`` (their sum; Ultralytics'
        trainer multiplies it by the batch size, compressdet keeps the per-batch value like other families).

        ``with_count``: also returns the normaliser all three terms were divided by, before its ``max(1, .)``:
        the batch's assigned-score sum (Ultralytics' ``target_scores_sum``, read from its assigner's output)."""
        box, cls = outputs
        dev = cls.device
        H, W = self.image_size
        idx, labels, boxes = [], [], []
        for i, t in enumerate(targets):
            b = torch.as_tensor(t["boxes"]).to(dev, torch.float32).reshape(-1, 4)
            lab = torch.as_tensor(t["labels"]).to(dev, torch.float32).reshape(-1)
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, lab = b[ok], lab[ok]
            xywh = torch.stack(((b[:, 0] + b[:, 2]) / 2 / W, (b[:, 1] + b[:, 3]) / 2 / H,
                                (b[:, 2] - b[:, 0]) / W, (b[:, 3] - b[:, 1]) / H), 1)
            idx.append(torch.full((len(b),), float(i), device=dev))
            labels.append(lab)
            boxes.append(xywh)
        batch = {"batch_idx": torch.cat(idx), "cls": torch.cat(labels), "bboxes": torch.cat(boxes)}
        preds = {"boxes": box, "scores": cls, "feats": self._placeholders(cls.shape[0], dev, cls.dtype)}
        crit = self._criterion(dev)
        seen: dict[str, Tensor] = {}
        hook = (crit.assigner.register_forward_hook(lambda _m, _i, out: seen.__setitem__("scores", out[2]))
                if with_count else None)
        try:
            _, parts, _ = crit.get_assigned_targets_and_loss(preds, batch)
        finally:
            if hook is not None:
                hook.remove()
        losses = {"box": parts[0], "cls": parts[1], "dfl": parts[2], "total": parts.sum()}
        if with_count:
            return losses, seen["scores"].detach().float().sum()
        return losses

    # ------------------------------------------------------------------------------- decode
    def decode(self, outputs: Sequence[Tensor]) -> Tensor:
        """Ultralytics' own decode: ``[N, 4 + C, K]`` (boxes cx, cy, w, h input px; sigmoid class scores)."""
        box, cls = outputs_float(tuple(outputs))
        head = self.head
        head.shape = None  # its anchor cache keys on the first level's shape only: rebuild for our device
        return head._inference({"boxes": box, "scores": cls, "feats": self._placeholders(box.shape[0], box.device)})

    def postprocessor(self, cfg: Any = None) -> YoloPostProcessor:
        return YoloPostProcessor(self, **postprocess_kwargs(cfg))

    def postprocess(self, outputs: Sequence[Tensor], orig_sizes: Any = None) -> list[dict[str, Tensor]]:
        return self.postprocessor()(outputs, orig_sizes)

    # ------------------------------------------------------------------------------- distillation
    def distill_mask(self, gt_boxes: list[Tensor], level_shapes: Sequence[Sequence[int]] | None = None,
                     psi: float = 0.5) -> list[Tensor]:
        """Near-object points per level ``[Bool[N, h, w]]``: inside a GT box (where Ultralytics' task-aligned
        assigner looks for its positives) or within ``CENTRE_RADIUS`` strides of its centre (a box smaller
        than a cell still marks its centre cell); ``psi`` is not used (anchor-free)."""
        shapes = [tuple(int(v) for v in s) for s in (level_shapes or self.level_shapes())]
        if shapes != self.level_shapes():
            raise ValueError(f"level shapes {shapes} are not this model's {self.level_shapes()} "
                             "(teacher and student need the same input size)")
        per_level = [h * w for h, w in shapes]
        pts = self.priors()
        centres_all = (pts[:, :2] + pts[:, 2:]) / 2
        out: list[list[Tensor]] = [[] for _ in shapes]
        for boxes in gt_boxes:
            boxes = torch.as_tensor(boxes).to(torch.float32).reshape(-1, 4).cpu()
            for lvl, (p, (h, w), s) in enumerate(zip(centres_all.split(per_level), shapes, self.strides())):
                if not len(boxes):
                    out[lvl].append(torch.zeros(h, w, dtype=torch.bool))
                    continue
                inside = ((p[:, None, 0] > boxes[None, :, 0]) & (p[:, None, 0] < boxes[None, :, 2])
                          & (p[:, None, 1] > boxes[None, :, 1]) & (p[:, None, 1] < boxes[None, :, 3]))
                c = (boxes[:, :2] + boxes[:, 2:]) / 2
                centre = (p[:, None, :] - c[None]).abs().amax(-1) < CENTRE_RADIUS * s
                out[lvl].append((inside | centre).any(1).view(h, w))
        return [torch.stack(m) if m else torch.zeros(0, h, w, dtype=torch.bool) for m, (h, w) in zip(out, shapes)]

    # ------------------------------------------------------------------------------- export
    def export_metadata(self) -> dict[str, Any]:
        return {"family": self.family, "outputs": list(self.export_outputs), "num_classes": self.num_classes,
                "priors_shape": [sum(h * w for h, w in self.level_shapes()), 4],
                "prior_format": "xyxy input px (one-stride boxes around Ultralytics' points)",
                "levels": [[h, w, 1] for h, w in self.level_shapes()], "strides": self.strides(),
                "reg_max": int(self.head.reg_max),
                "decode": "ultralytics Detect._inference (DFL + dist2bbox) + per-class NMS (float, outside the graph)"}


class YoloLoss(GlobalCountLoss):
    """``loss(outputs, targets)`` of a :class:`YoloDetector` (held by reference, not a submodule).

    Under DDP the trainer sets ``reduce_counts`` (a sum over processes, as for the other families' losses):
    Ultralytics' normaliser (the assigned-score sum) is then the global batch's, so ``W`` processes compute
    exactly one process's loss over the whole batch (each returns its partial sum; the trainer scales the
    gradients by ``W``), and the distillers, whose normalisers are global too, keep their strength relative
    to the detection loss whatever ``W`` (without it they were ``W`` times weaker). Ultralytics' own DDP
    training divides by each process's sum instead.
    """



class YoloPostProcessor:
    """Ultralytics' decode, then compressdet's selection: per level the ``topk_candidates`` best (point,
    class) pairs above ``score_thresh``, torchvision's per-class NMS at ``nms_thresh``, at most
    ``detections_per_class * num_classes`` boxes (the FPN families' mapping), boxes clipped to the input
    and scaled to ``orig_sizes``. Defaults: compressdet's (0.0, 0.4, 64, 50)."""

    def __init__(self, model: YoloDetector, *, score_thresh: float = 0.0, nms_thresh: float = 0.4,
                 topk_candidates: int = 64, detections_per_class: int = 50) -> None:
        self.model = model
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.topk_candidates = int(topk_candidates)
        self.detections_per_img = int(detections_per_class) * model.num_classes

    @torch.no_grad()
    def __call__(self, outputs: Sequence[Tensor], orig_sizes: Sequence[Sequence[int]] | None = None
                 ) -> list[dict[str, Tensor]]:
        from torchvision.ops import batched_nms

        m = self.model
        y = m.decode(outputs)  # [N, 4 + C, K]
        H, W = m.image_size
        per_level = [h * w for h, w in m.level_shapes()]
        dets = []
        for i, yi in enumerate(y):
            xywh, scores = yi[:4].T, yi[4:].T  # [K, 4], [K, C]
            xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
            xyxy = torch.stack((xyxy[:, 0].clamp(0, W), xyxy[:, 1].clamp(0, H), xyxy[:, 2].clamp(0, W),
                                xyxy[:, 3].clamp(0, H)), 1)
            b_all, s_all, l_all = [], [], []
            start = 0
            for n in per_level:
                s = scores[start:start + n].flatten()
                keep = s > self.score_thresh
                s, idx = s[keep], keep.nonzero().squeeze(1)
                s, top = s.topk(min(self.topk_candidates, len(s)))
                idx = idx[top]
                b_all.append(xyxy[start + torch.div(idx, m.num_classes, rounding_mode="floor")])
                s_all.append(s)
                l_all.append(idx % m.num_classes)
                start += n
            b, s, lab = torch.cat(b_all), torch.cat(s_all), torch.cat(l_all)
            keep = batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            d = {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}
            if orig_sizes is not None:
                h0, w0 = orig_sizes[i]
                d["boxes"] = d["boxes"] * torch.tensor([w0 / W, h0 / H, w0 / W, h0 / H], dtype=b.dtype, device=b.device)
            dets.append(d)
        return dets


# --------------------------------------------------------------------------------------------
# building, user checkpoints, Ultralytics checkpoints


def _model_yaml(name: str) -> dict[str, Any]:
    from ultralytics.nn.tasks import yaml_model_load

    return yaml_model_load(YOLO_MODELS[name])


def _layout(cfg: dict[str, Any]) -> tuple:
    """What makes two model YAMLs the same network, whatever their class count or file name."""
    scale = cfg.get("scale") or (next(iter(cfg["scales"])) if cfg.get("scales") else None)
    return (repr(cfg.get("backbone")), repr(cfg.get("head")), scale, cfg.get("scales", {}).get(scale) if scale else None)


def load_ultralytics_checkpoint(path: str | os.PathLike, what: str = "model.weights") -> nn.Module:
    """The detection model in a user's Ultralytics ``.pt`` (their own, trusted file).

    Loaded by Ultralytics' ``torch_safe_load(safe_only=True)``: ``torch.load(weights_only=True)`` against
    Ultralytics' allow-list of its own and torch's model classes, so a file that pickles anything else is
    refused rather than run. compressdet's own files stay ``weights_only`` plain data.

    Raises:
        ModelError: missing file, not a ``.pt``, unreadable, or not a detection model.
    """
    _ultralytics(what)
    from ultralytics.nn.tasks import _SafeLoad, torch_safe_load

    p = Path(path).expanduser()
    if not p.is_file():  # Ultralytics would try to download a missing file by its name
        raise ModelError(f"{what}: file '{path}' does not exist")
    if p.suffix != ".pt":
        raise ModelError(f"{what}: '{path}' is not an Ultralytics .pt checkpoint")
    try:
        ckpt, _ = torch_safe_load(str(p), safe_only=bool(_SafeLoad.SUPPORTED))
    except Exception as e:  # noqa: BLE001 - any failure to read it: one line naming the file
        first = str(e).strip().splitlines()
        raise ModelError(f"{what}: '{path}' cannot be read as an Ultralytics checkpoint: "
                         f"{type(e).__name__}: {first[0][:200] if first else ''}") from None
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module) or not isinstance(getattr(net, "yaml", None), dict):
        raise ModelError(f"{what}: '{path}' holds no Ultralytics model ('model' / 'ema' with its yaml)")
    return net.float()


def build_yolo(*, name: str, cfg: dict[str, Any] | None = None, num_classes: int = 3,
               image_size: Sequence[int] = (384, 1248), weights: str | None = None,
               classes: Sequence[str] | None = None) -> YoloDetector:
    """An Ultralytics detection model from its model YAML (``cfg``, default: the registry name's shipped
    YAML) with ``nc = num_classes``, from scratch or with a user's checkpoint's weights (``weights``: a
    checkpoint of the same architecture; the tensors whose shapes fit are loaded, so one for another class
    count keeps all but the class convs). The YAML goes into ``arch``, so a reload needs neither the file nor
    the YAML."""
    _ultralytics(f"model '{name}'")
    from ultralytics.nn.tasks import DetectionModel

    src = load_ultralytics_checkpoint(weights, f"{name}: model.weights") if weights else None
    if cfg is None:
        cfg = _model_yaml(name)
        if src is not None and _layout(src.yaml) != _layout(cfg):
            have = [n for n in YOLO_MODELS if _layout(_model_yaml(n)) == _layout(src.yaml)]
            raise ModelError(f"{name}: model.weights '{weights}' holds another architecture "
                             f"({src.yaml.get('yaml_file', 'its own YAML')}): "
                             + (f"name it as model.arch: {have[0]}" if have else "not one of the registered yolo models"))
    cfg = {**copy.deepcopy(cfg), "nc": int(num_classes)}
    try:
        net = DetectionModel(copy.deepcopy(cfg), nc=int(num_classes), verbose=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics' parser on a user's YAML
        raise ModelError(f"{name}: Ultralytics cannot build the model: {type(e).__name__}: {e}") from None
    if src is not None:
        want = net.state_dict()
        fit = {k: v for k, v in src.state_dict().items() if k in want and v.shape == want[k].shape}
        if not fit:
            raise ModelError(f"{name}: model.weights '{weights}': no tensor fits the model (another architecture?)")
        net.load_state_dict(fit, strict=False)
    if classes is not None:
        net.names = dict(enumerate(classes))
    arch = {"name": name, "family": "yolo", "cfg": cfg, "num_classes": int(num_classes),
            "image_size": [int(v) for v in image_size]}
    return YoloDetector(net, image_size=image_size, arch=arch)


def _from_arch(arch: dict[str, Any]) -> YoloDetector:
    return build_yolo(name=arch["name"], cfg=arch.get("cfg"), num_classes=arch.get("num_classes", 3),
                      image_size=arch.get("image_size", (384, 1248)))


def _make_builder(name: str):
    def builder(*, image_size: Sequence[int] = (384, 1248), num_classes: int = 3, width: float | None = None,
                pretrained: str | None = None, weights: str | None = None, **_ignored: Any) -> YoloDetector:
        # _ignored: ShuffleDet-only build_model arguments (num_anchors, dropout)
        if width is not None:
            raise ModelError(f"'{name}' has no width multiplier (model.width is for shuffledet; the yolo sizes are "
                             "registered names)")
        if pretrained:
            raise ModelError(f"'{name}': model.pretrained is ShuffleDet's; give an Ultralytics .pt as model.weights")
        return build_yolo(name=name, num_classes=num_classes, image_size=image_size, weights=weights)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"Ultralytics {YOLO_MODELS[name]} (needs {EXTRA}), from scratch or model.weights."
    return builder


for _name in YOLO_MODELS:
    register_model(_name, from_arch=_from_arch)(_make_builder(_name))


def save_ultralytics(model: YoloDetector | str | os.PathLike, path: str | os.PathLike,
                     classes: Sequence[str] | None = None) -> Path:
    """Write a yolo model (a detector, or a compressdet model file of one) as an Ultralytics checkpoint that
    ``ultralytics.YOLO(path)`` loads, predicts and exports with (same weights: compressdet's input
    adapter is not part of it, Ultralytics feeds RGB / 255 itself).

    Args:
        classes: the class names (default: the model file's ``meta["classes"]``, else ``class0..``).

    Raises:
        ModelError: not a yolo model.
    """
    from .._io import atomic_path

    if not isinstance(model, nn.Module):
        from ._builder import load_model

        model, meta = load_model(model)
        classes = classes or meta.get("classes")
    if getattr(model, "family", None) != "yolo":
        raise ModelError(f"only yolo models export to an Ultralytics checkpoint (this is a "
                         f"{getattr(model, 'family', type(model).__name__)} model)")
    ul = _ultralytics("the Ultralytics checkpoint")
    net = copy.deepcopy(model.net).cpu().float().eval()
    names = list(classes) if classes else [f"class{i}" for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ModelError(f"{len(names)} class names for a model of {model.num_classes} classes")
    net.names = dict(enumerate(names))
    H, W = model.image_size
    train_args = {"task": "detect", "imgsz": max(H, W), "model": f"{model.arch.get('name')}.yaml"}
    net.args = dict(train_args)
    net.__dict__.pop("_criteria", None)
    ckpt = {"date": None, "version": ul.__version__, "license": "AGPL-3.0 License (https://ultralytics.com/license)",
            "epoch": -1, "best_fitness": None, "model": net, "ema": None, "updates": None, "optimizer": None,
            "train_args": train_args, "train_metrics": None, "train_results": None,
            "compressdet": {"arch": model.arch, "image_size": [H, W]}}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
