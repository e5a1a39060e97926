"""compressdet: compress one-stage object detectors from one YAML recipe.

Teacher training, fine-grained feature imitation (Wang et al., CVPR 2019), structured pruning,
INT8 quantization-aware training, ONNX/TensorRT export and benchmarks, chained by
``compressdet run RECIPE``.
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["__version__", "Recipe", "load_recipe", "UserError"]
