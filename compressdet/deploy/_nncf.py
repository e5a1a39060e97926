"""OpenVINO INT8 by NNCF post-training quantization of the fp32 IR (``nncf.quantize``).

NNCF places the quantizers where OpenVINO's CPU plugin has int8 kernels and calibrates them on
real images; on some models and sizes that graph beats the run's own QDQ graph (issue #40), so
``deploy`` measures both rather than guessing. Optional: ``pip install 'compressdet[openvino]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["nncf_unavailable", "quantize_ir"]


def nncf_unavailable(purpose: str = "OpenVINO INT8 by NNCF") -> str | None:
    """None when NNCF and OpenVINO import, else the reason (names the extra to install)."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        return f"{purpose} needs the {e.name or 'nncf'} package (pip install 'compressdet[openvino]')"
    return None


def quantize_ir(fp32_xml: str | os.PathLike, out_xml: str | os.PathLike, images: Sequence[np.ndarray]
                ) -> dict[str, Any]:
    """``nncf.quantize`` the fp32 IR on ``images`` (each ``[1, 3, H, W]`` float32, model-ready) and save the
    INT8 IR atomically (``.bin`` first, then ``.xml``), keeping the fp32 IR's compressdet metadata.

    Node names that NNCF or OpenVINO number from a process-wide counter are replaced as in
    :func:`compressdet.export._openvino.convert_to_ir` (both save through ``save_ir``), so the same inputs
    give the same files.

    Returns:
        ``{"path", "bin", "calibration_images", "nncf"}``.
    """
    import nncf
    import openvino as ov

    from ..export._openvino import ir_bin_path, ir_metadata, save_ir

    fp32_xml, out_xml = Path(fp32_xml), Path(out_xml)
    meta = ir_metadata(fp32_xml)
    model = ov.Core().read_model(str(fp32_xml))
    data = nncf.Dataset([np.ascontiguousarray(x, dtype=np.float32) for x in images])
    quantized = nncf.quantize(model, data, subset_size=len(images))
    save_ir(quantized, out_xml, {**meta, "precision": "int8", "quantization": "nncf-ptq openvino"})
    return {"path": str(out_xml), "bin": str(ir_bin_path(out_xml)), "calibration_images": len(images),
            "nncf": nncf.__version__}
