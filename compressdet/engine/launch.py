"""From a stage context to a finished training run: data, loss, teacher, evaluator, Trainer.

The train, prune and qat stages all train the same way; :func:`fit_stage` is the one place that
wires a recipe's data/schedule/imitation/eval settings to :class:`~compressdet.engine.Trainer`.
:func:`build_evaluate_fn` is the validation used for best-checkpoint selection (the ``primary`` value
of the data's metric: KITTI mAP40 or COCO AP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models.contract import is_detector, outputs_float
from ..recipe import DataConfig, EvalConfig, ImitationConfig, PostprocessConfig, ScheduleConfig

__all__ = ["build_evaluate_fn", "fit_stage", "load_teacher"]


def build_evaluate_fn(data_cfg: DataConfig, *, eval_cfg: EvalConfig, postprocess: PostprocessConfig,
                      device: str | torch.device = "cpu", viz_dir: str | Path | None = None,
                      mask_psi: float | None = None) -> Callable[[nn.Module, int], dict[str, Any]]:
    """``fn(model, step) -> {"metric", "primary", "map40", "map11", "ap": {cls: {level: ap40}}, "images"}``
    on the val split (KITTI metric; with COCO: ``metric``, ``primary``, ``ap``, ``ap50``, ... ``ar100``
    and ``images``), through :class:`compressdet.eval.evaluator.DetectionEvaluator`.

    Ground truth is read once; ``eval.max_images`` (or ``data.max_val_images``) limits the images.
    ``images`` holds up to ``eval.num_images_logged`` detection drawings (HWC uint8) when
    ``compressdet.eval.viz`` is available; they are also written as PNGs under ``viz_dir``. With
    ``mask_psi`` (a student that imitates) the same images also get the imitation mask of their
    ground truth drawn over the model input (``mask_<id>``), so one can see where imitation acts.
    """
    from ..eval.evaluator import DetectionEvaluator
    from ..models.postprocess import PostProcessor

    classes = tuple(data_cfg.classes)
    hw = tuple(data_cfg.image_size)
    post = PostProcessor.from_config(hw, postprocess, num_classes=len(classes))
    ev = DetectionEvaluator(data_cfg, post=post, split="val", eval_cfg=eval_cfg, protocol=eval_cfg.protocol,
                            batch_size=eval_cfg.batch_size, num_workers=data_cfg.num_workers,
                            max_images=eval_cfg.max_images, pin_memory=torch.device(device).type == "cuda")
    dev = torch.device(device)

    def evaluate(model: nn.Module, step: int) -> dict[str, Any]:
        inputs: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (id, model input, GT boxes) to draw masks

        def keep_inputs(images: torch.Tensor, targets: list[dict]) -> None:
            for j, t in enumerate(targets):
                if mask_psi is not None and len(inputs) < eval_cfg.num_images_logged:
                    inputs.append((t["image_id"], images[j], t["boxes"]))

        if is_detector(model):  # the model decodes its own outputs (detector contract)
            ev.post = model.postprocessor(postprocess)
        dets = ev.predict(lambda x: outputs_float(model(x.to(dev))), on_batch=keep_inputs)
        res = ev.score(dets)
        if res["metric"] == "kitti":
            result: dict[str, Any] = {"metric": "kitti", "primary": float(res["map40"]),
                                      "map40": float(res["map40"]), "map11": float(res["map11"]),
                                      "ap": {c: {lvl: float(v["ap40"]) for lvl, v in lv.items()}
                                             for c, lv in res["ap"].items()}}
        else:
            result = {k: v for k, v in res.items() if k not in ("images", "detections")}
        shown = list(dets)[: eval_cfg.num_images_logged]
        result["images"] = _draw(ev, shown, step, viz_dir)
        if inputs:
            result["images"].update(_draw_masks(inputs, model, mask_psi, step, viz_dir))
        return result

    return evaluate


def _draw(ev: Any, ids: list[str], step: int, viz_dir: str | Path | None) -> dict[str, np.ndarray]:
    """Ground truth and detections drawn on the original images (for tensorboard and ``viz_dir``)."""
    if not ids:
        return {}
    from ..data.kitti import read_image
    from ..eval.viz import draw_detections

    out: dict[str, np.ndarray] = {}
    for image_id in ids:
        rgb = read_image(ev.base.image_path(image_id)).permute(1, 2, 0).numpy()
        arr = draw_detections(rgb, ev.gt_objects(image_id), ev.det_objects(image_id), score_thresh=0.1,
                              classes=ev.classes)
        out[image_id] = arr
        if viz_dir is not None:
            _save_png(arr, Path(viz_dir) / f"step{step:06d}_{image_id}.png")
    return out


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    from .._io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _draw_masks(inputs: list, model: nn.Module, psi: float, step: int,
                viz_dir: str | Path | None) -> dict[str, np.ndarray]:
    """The distillation mask (the model's ``distill_mask``, as training computes it) over each image's
    model input; for several levels, the finest level's."""
    from ..data.transforms import denormalize
    from ..eval.viz import draw_mask

    boxes = [b for _, _, b in inputs]
    if is_detector(model):
        masks = model.distill_mask(boxes, None, psi)[0]
    else:  # a bare ShuffleDet-like module (no contract): FGFI's anchor mask at stride 16
        from ..losses import imitation_mask
        from ..models.anchors import SEED_ANCHOR_SHAPES, generate_anchors

        hw = tuple(int(s) for s in inputs[0][1].shape[-2:])
        masks = imitation_mask(boxes, generate_anchors(hw), (hw[0] // 16, hw[1] // 16), len(SEED_ANCHOR_SHAPES), psi)
    out: dict[str, np.ndarray] = {}
    for (image_id, image, _), mask in zip(inputs, masks):
        arr = draw_mask(denormalize(image).permute(1, 2, 0).numpy(), mask.cpu())
        out[f"mask_{image_id}"] = arr
        if viz_dir is not None:
            _save_png(arr, Path(viz_dir) / f"step{step:06d}_mask_{image_id}.png")
    return out


def load_teacher(path: str | Path, device: str | torch.device) -> nn.Module:
    """A frozen teacher (eval mode, no grads) from a model file."""
    from ..models import load_model

    teacher, _ = load_model(path, map_location=device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if not hasattr(teacher, "forward_with_features"):
        raise UserError(f"{path}: the teacher model has no forward_with_features (not a compressdet detector)")
    return teacher


def fit_stage(ctx: Any, model: nn.Module, *, schedule: ScheduleConfig, imitation: ImitationConfig | list | None,
              postprocess: PostprocessConfig, eval_cfg: EvalConfig,
              param_groups: Callable | None = None, on_step: Callable | None = None,
              loss_fn: nn.Module | None = None, evaluate: bool = True, hooks: tuple = (),
              description: str | None = None) -> dict[str, Any]:
    """Train ``model`` as stage ``ctx`` says (resuming ``ctx.latest_checkpoint()``); returns the summary.

    ``imitation``: an ``ImitationConfig`` (fgfi) or a list of ``DistillConfig`` (what
    ``recipe.distill_methods(stage)`` gives). The teacher is ``ctx.input("teacher")``'s model when
    any distillation is on (weight > 0). After it
    returns, rank 0 finds the best weights in ``ctx.checkpoint_dir / "best.pt"`` (with
    ``evaluate=False``: no validation during training, best = last). ``description``: the progress
    line's name (default: the stage's, e.g. ``prune round 1/3`` from the prune stage).
    """
    from ..data import build_dataset, build_loader, prepare_data

    data_cfg = ctx.recipe.data
    hw = tuple(data_cfg.image_size)
    prepare_data(data_cfg)
    if schedule.batch_size % ctx.world_size:
        raise UserError(f"stage '{ctx.name}': schedule.batch_size {schedule.batch_size} must be divisible by the "
                        f"{ctx.world_size} processes")
    train_set = build_dataset(data_cfg, "train", train=True, seed=ctx.recipe.seed)
    loader = build_loader(train_set, batch_size=schedule.batch_size // ctx.world_size, train=True,
                          seed=ctx.recipe.seed, rank=ctx.rank, world_size=ctx.world_size,
                          num_workers=data_cfg.num_workers, pin_memory=torch.device(ctx.device).type == "cuda")
    num_anchors = getattr(model, "num_anchors", 9)
    if is_detector(model):  # the model owns its priors and loss (detector contract)
        if tuple(model.image_size) != hw:
            raise UserError(f"stage '{ctx.name}': the model's input size {tuple(model.image_size)} is not "
                            f"data.image_size {hw}")
        anchors = model.priors() if model.family == "shuffledet" else None  # crosskd decodes ShuffleDet anchors
        if loss_fn is None:
            loss_fn = model.build_loss()
    else:  # QAT's fake-quant ShuffleDet (a GraphModule wrapper): the ConvDet layout of the float model
        from ..losses import SqueezeDetLoss
        from ..models.anchors import generate_anchors

        anchors = generate_anchors(hw)
        if loss_fn is None:
            loss_fn = SqueezeDetLoss(anchors, num_classes=len(data_cfg.classes), num_anchors=num_anchors, image_size=hw)
    from ..recipe import as_distill_list

    teacher = None
    methods = as_distill_list(imitation)
    if methods:
        teacher = load_teacher(ctx.input("teacher").artifact("model"), ctx.device)
    fgfi = next((m for m in methods if m.method == "fgfi"), None)
    evaluate_fn = None
    if ctx.is_main and evaluate:
        evaluate_fn = build_evaluate_fn(data_cfg, eval_cfg=eval_cfg, postprocess=postprocess, device=ctx.device,
                                        viz_dir=ctx.stage_dir / "viz", mask_psi=fgfi.psi if fgfi is not None else None)
    from .trainer import Trainer

    trainer = Trainer(model, schedule=schedule, loss_fn=loss_fn, train_loader=loader, evaluate_fn=evaluate_fn,
                      teacher=teacher, imitation=imitation, out_dir=ctx.checkpoint_dir, tb_dir=ctx.tb_dir,
                      device=ctx.device, rank=ctx.rank, world_size=ctx.world_size, seed=ctx.recipe.seed,
                      param_groups=param_groups, on_step=on_step, anchors=anchors, num_anchors=num_anchors,
                      description=description or ctx.name, hooks=hooks)
    return trainer.fit(resume_from=ctx.latest_checkpoint())
