"""TensorRT engine from an ONNX graph (fp16, or INT8 from an explicit QDQ graph).

Needs the ``tensorrt`` extra and a CUDA device; without them it raises
``MissingDependencyError`` (exit 2) naming what is missing, before doing any work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..errors import MissingDependencyError, UserError

__all__ = ["check_tensorrt", "build_engine"]


def check_tensorrt() -> Any:
    """Import tensorrt and check for a CUDA device; returns the module.

    Raises:
        MissingDependencyError: tensorrt not installed, or no CUDA device.
    """
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError("TensorRT export needs the 'tensorrt' package and a CUDA device: "
                                     "tensorrt is not installed (pip install 'compressdet[tensorrt]')") from None
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("TensorRT export needs a CUDA device: none is available "
                                     f"(tensorrt {getattr(trt, '__version__', '?')} is installed)")
    return trt


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, int8: bool = False,
                 fp16: bool = True, dynamic_batch: bool = False, max_batch: int = 8,
                 workspace_gb: float = 2.0) -> dict[str, Any]:
    """Parse ``onnx_path`` with ``OnnxParser`` and serialize an engine to ``engine_path``.

    Args:
        int8: the ONNX is a QDQ graph; its scales are used as-is (explicit quantization).
        dynamic_batch: add an optimization profile for batch 1..``max_batch`` (graph must allow it).

    Returns:
        ``{"path", "precision", "bytes"}``.
    """
    trt = check_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT >= 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # QDQ scales drive it; no calibrator
    inp = network.get_input(0)
    if dynamic_batch or inp.shape[0] == -1:
        shape = tuple(inp.shape)[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, *shape), (1, *shape), (max_batch, *shape))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    with atomic_path(engine_path, suffix=".engine.tmp") as tmp:
        Path(tmp).write_bytes(bytes(serialized))
    return {"path": str(engine_path), "precision": "int8" if int8 else ("fp16" if fp16 else "fp32"),
            "bytes": Path(engine_path).stat().st_size}
