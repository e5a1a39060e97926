"""Inference on images, folders, globs and videos with the evaluation's exact pre- and post-processing.

``compressdet predict SOURCE --model RUN|MODEL|ONNX|IR --backend ...`` sits on top of the lower
layers like ``bench``: it opens the model through :mod:`compressdet.bench.backends` (the same code
the bench times and evaluates with), resizes/normalises with the dataset's
:class:`~compressdet.data.transforms.DetectionTransform`, decodes with
:class:`~compressdet.models.postprocess.PostProcessor` built from the run's config, draws with
:func:`compressdet.eval.viz.draw_detections` and writes KITTI txt / COCO JSON results.
"""

from .predictor import PredictOptions, Predictor, iter_sources, predict, resolve_model

__all__ = ["Predictor", "PredictOptions", "resolve_model", "iter_sources", "predict"]
