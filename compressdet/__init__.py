"""compressdet: compress one-stage object detectors from one YAML recipe.

Teacher training, fine-grained feature imitation (Wang et al., CVPR 2019), structured pruning,
INT8 quantization-aware training, ONNX/TensorRT export and benchmarks, chained by
``compressdet run RECIPE``, or from Python: :func:`run` a recipe, read a :class:`Run`, :func:`load` its model
and predict, or :func:`compress` a model object you hold.
"""

__version__ = "0.1.0"

from .api import Detections, Detector, Run, StageInfo, compress, load, run  # noqa: E402
from .errors import UserError  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["__version__", "run", "Run", "StageInfo", "load", "Detector", "Detections", "compress",
           "Recipe", "load_recipe", "UserError"]
