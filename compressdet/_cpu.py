"""What the CPU offers int8 inference and bf16 training, read once from the OS (bottom layer: bench, predict
and deploy warn from it, the trainer warns when CPU bf16 autocast will be slow, the tests skip the int8
numerics checks that need it)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "int8_dot_product", "bf16_native", "INT8_SATURATION_NOTE", "BF16_SLOW_NOTE"]

#: why ONNX Runtime's u8s8 int8 convolutions can differ from PyTorch's on some x86 CPUs
INT8_SATURATION_NOTE = ("this x86 CPU has no VNNI/AMX int8 dot product: ONNX Runtime's and OpenVINO's u8s8 int8 "
                        "kernels add pairs of products in saturating int16 here, so their INT8 outputs can differ "
                        "from PyTorch's unless the graph has 7-bit activations (quant.reduce_range, auto: on here); "
                        "check the mAP, e.g. compressdet deploy (fp32 is not affected)")

#: why CPU bf16 autocast can make training slower on some x86 CPUs
BF16_SLOW_NOTE = ("this x86 CPU has no AVX512-BF16/AMX: bf16 matrix maths is emulated in fp32 here, so CPU bf16 "
                  "autocast (schedule.amp: bf16) is likely slower than fp32 (benchmarks/train_speed.py measures it)")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The ``flags`` of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_dot_product() -> bool:
    """True unless this is an x86 CPU known to lack VNNI / AMX (where u8s8 int8 kernels saturate)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True  # ARM's and others' int8 kernels accumulate in int32
    flags = cpu_flags()
    if not flags:
        return True  # unknown: do not warn on a guess
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})


def bf16_native() -> bool:
    """True unless this is an x86 CPU known to lack AVX512-BF16 / AMX-BF16 (where bf16 convolutions and
    matrix products are converted to fp32 and back, so bf16 autocast costs time instead of saving it)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True  # ARM's bf16 support is not read from these flags: do not warn on a guess
    flags = cpu_flags()
    if not flags:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})
