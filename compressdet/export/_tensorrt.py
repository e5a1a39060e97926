"""TensorRT engine from an ONNX graph (fp16, or INT8 from an explicit QDQ graph), and a runner for it.

Needs the ``tensorrt`` extra and a CUDA device; without them it raises
``MissingDependencyError`` (exit 2) naming what is missing, before doing any work.
:class:`TensorRTRunner` runs an engine with the TensorRT 10 API (tensor addresses +
``execute_async_v3``) on torch CUDA tensors, so bench needs no pycuda/cuda-python.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..errors import MissingDependencyError, UserError

__all__ = ["check_tensorrt", "tensorrt_unavailable", "build_engine", "TensorRTRunner"]


def check_tensorrt(purpose: str = "TensorRT export") -> Any:
    """Import tensorrt and check for a CUDA device; returns the module.

    Args:
        purpose: what needs it, for the message (``"TensorRT export"``, ``"the bench tensorrt backend"``).

    Raises:
        MissingDependencyError: tensorrt not installed, or no CUDA device.
    """
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs the 'tensorrt' package and a CUDA device: "
                                     "tensorrt is not installed (pip install 'compressdet[tensorrt]')") from None
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(f"{purpose} needs a CUDA device: none is available "
                                     f"(tensorrt {getattr(trt, '__version__', '?')} is installed)")
    return trt


def tensorrt_unavailable(purpose: str = "TensorRT export") -> str | None:
    """None when TensorRT can run here, else the reason (the :func:`check_tensorrt` message)."""
    try:
        check_tensorrt(purpose)
    except MissingDependencyError as e:
        return str(e)
    return None


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


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
             "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "uint8": torch.uint8}
    for name, tdt in table.items():
        if hasattr(trt, name) and dtype == getattr(trt, name):
            return tdt
    raise UserError(f"TensorRT tensor dtype {dtype} has no torch equivalent")


class TensorRTRunner:
    """One deserialized engine + execution context, run on torch CUDA tensors.

    Output buffers are allocated once per input shape and reused, so a timed call is only the
    enqueue (``execute_async_v3`` on :attr:`stream`) — what CUDA-event timing should see.

    Args:
        engine_path: a serialized engine (from :func:`build_engine`).
        device: CUDA device index.

    Raises:
        MissingDependencyError: no tensorrt / no CUDA.
        UserError: the file is not an engine this TensorRT can load.
    """

    def __init__(self, engine_path: str | os.PathLike, *, device: int = 0):
        import torch

        trt = check_tensorrt("running a TensorRT engine")
        self.trt, self.path = trt, Path(engine_path)
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(f"{self.path}: TensorRT could not deserialize the engine (built by another "
                            f"TensorRT version or GPU? rebuild it with compressdet export --tensorrt)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        if len(self.inputs) != 1 or not self.outputs:
            raise UserError(f"{self.path}: expected one input and at least one output, got inputs {self.inputs} "
                            f"and outputs {self.outputs}")
        self.input_name = self.inputs[0]
        self.output_name = "head" if "head" in self.outputs else self.outputs[0]
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.stream = torch.cuda.Stream(device=self.device)
        self._buffers: dict[tuple[int, ...], dict[str, Any]] = {}

    @property
    def input_shape(self) -> list[int | None]:
        """Engine input shape, None for a dynamic axis (as ``bench.backends.shape_mismatch`` expects)."""
        return [None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(self.input_name)]

    @property
    def max_batch(self) -> int:
        """Largest batch the engine accepts (its profile's max for a dynamic batch axis)."""
        shape = self.input_shape
        if shape[0] is not None:
            return int(shape[0])
        return int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])

    def bind(self, x: Any) -> dict[str, Any]:
        """Set the input shape and all tensor addresses for input ``x`` (CUDA, contiguous); returns the outputs."""
        import torch

        shape = tuple(int(d) for d in x.shape)
        if not self.context.set_input_shape(self.input_name, shape):
            raise UserError(f"{self.path}: the engine does not accept input shape {list(shape)} "
                            f"(engine input {self.input_shape})")
        outs = self._buffers.get(shape)
        if outs is None:
            outs = {}
            for n in self.outputs:
                oshape = tuple(int(d) for d in self.context.get_tensor_shape(n))
                outs[n] = torch.empty(oshape, dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(n)),
                                      device=self.device)
            self._buffers[shape] = outs
        self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
        for n, t in outs.items():
            self.context.set_tensor_address(n, int(t.data_ptr()))
        return outs

    def enqueue(self) -> None:
        """Launch the bound inference on :attr:`stream` (asynchronous)."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise UserError(f"{self.path}: TensorRT execute_async_v3 failed (see the log above)")

    def to_device(self, images: Any) -> Any:
        """``images`` (numpy or tensor ``[N, 3, H, W]``) as a contiguous CUDA tensor of the engine's input dtype."""
        import numpy as np
        import torch

        t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        return t.to(self.device, dtype=self.input_dtype).contiguous()

    def __call__(self, images: Any) -> Any:
        """Run ``images`` ``[N, 3, H, W]``; returns the head output as a float32 numpy array (blocking)."""
        import torch

        x = self.to_device(images)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy above ran there
        outs = self.bind(x)
        self.enqueue()
        self.stream.synchronize()
        return outs[self.output_name].float().cpu().numpy()
