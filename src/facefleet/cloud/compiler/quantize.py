"""onnxruntime static quantization: the stand-in for the DFC emulator where the DFC is absent.

QDQ, per-channel INT8 weights, INT8 (or INT16) activations calibrated with MinMax on aligned
faces, optional layers kept in float (the analogue of 16-bit overrides). Not the Hailo
quantizer: it measures how fragile a network is to 8-bit activations, which is what the gate needs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec

log = logging.getLogger(__name__)


def model_input(spec: ModelSpec, crops_bgr: np.ndarray) -> np.ndarray:
    """Host preprocessing of the float ONNX (the same arithmetic the onnx backend puts in-graph)."""
    x = crops_bgr[..., ::-1] if spec.input.color == "RGB" else crops_bgr
    x = x.astype(np.float32)
    if spec.normalization is not None:
        x = (x - np.array(spec.normalization.mean, np.float32)) / np.array(spec.normalization.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if spec.input.layout == "NCHW" else x)


def prepared_float(float_path: Path, out_path: Path, opset: int = 13) -> Path:
    """The float graph at opset >= 13 (per-channel QDQ needs ``axis``) with a free batch dimension."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(float_path))
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current < opset:
        model = version_converter.convert_version(model, opset)
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    onnx.save(model, str(out_path))
    return out_path


def quantize_static_onnx(float_path: Path, spec: ModelSpec, calib_bgr: np.ndarray, out_path: Path,
                         activations: Literal["int8", "int16"] = "int8", exclude: list[str] | None = None,
                         per_channel: bool = True) -> Path:
    """Write the QDQ-quantized model to ``out_path``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if len(calib_bgr) == 0:
        raise FacefleetError("quantization needs at least one calibration face")
    data = model_input(spec, calib_bgr)
    name = spec.input.name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(data), 16))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {name: data[i:i + 16]}

    act = QuantType.QInt16 if activations == "int16" else QuantType.QUInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs a pre-processing hint on the root logger
    try:
        prepared = prepared_float(float_path, out_path.with_suffix(".float.onnx"))
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=act, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude or []),
                        extra_options={"ActivationSymmetric": activations == "int16"})
    except Exception as e:
        raise FacefleetError(f"onnxruntime quantization of {float_path.name} failed: {str(e).splitlines()[0]}") from None
    finally:
        root.setLevel(level)
        out_path.with_suffix(".float.onnx").unlink(missing_ok=True)
    return out_path
