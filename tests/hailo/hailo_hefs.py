"""Test "HEF" files for the hailo_platform double, written at run time (never committed).

A test HEF is a JSON file naming its ONNX twin in shared/assets, the network and vstream names
of the zoo HEF it stands for (hailort_api.md §8), the normalization the HEF holds, channel-last
output shapes and per-output quantization (qp_scale, qp_zp) calibrated on real frames the way
the DFC calibrates, so the tests see UINT8-rounded outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facefleet.modelspec import ModelSpec, load_catalog
from facefleet.runtime.hailo import hef_spec

# SCRFD-2.5G: zoo vstream names (hailort_api.md §8) -> the raw-heads ONNX twin's outputs
SCRFD_2_5G = {
    "conv42": ("439", (80, 80, 2)), "conv49": ("477", (40, 40, 2)), "conv55": ("515", (20, 20, 2)),
    "conv43": ("440", (80, 80, 8)), "conv50": ("478", (40, 40, 8)), "conv56": ("516", (20, 20, 8)),
    "conv44": ("442", (80, 80, 20)), "conv51": ("480", (40, 40, 20)), "conv57": ("518", (20, 20, 20)),
}
# the zoo's SCRFD HEFs end at the Mul after each box conv (hailo_model_zoo cfg/networks/scrfd_2.5g.yaml
# end nodes Mul_116/140/164): the per-stride bbox scale of the raw-heads twin is computed inside
SCRFD_2_5G_BOX_SCALES = {"conv43": 0.8807, "conv50": 0.9315, "conv56": 1.1424}
ARCFACE = {"fc1": ("516", (512,))}
TWIN_NORM = {"scrfd": {"mean": [127.5] * 3, "std": [128.0] * 3}, "arcface": {"mean": [127.5] * 3, "std": [127.5] * 3}}


def catalog_spec(name: str) -> ModelSpec:
    return next(s for s in load_catalog() if s.name == name)


def twin_outputs(twin: Path, norm: dict, frames: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """The twin's float outputs for uint8 RGB NHWC frames (what the HEF computes before quantization)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(twin), providers=["CPUExecutionProvider"])
    x = ((frames.astype(np.float32) - np.array(norm["mean"], np.float32)) / np.array(norm["std"], np.float32))
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    outs = [s.run(names, {s.get_inputs()[0].name: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(names))]


def calibrate(values: np.ndarray, margin: float = 1.25) -> tuple[float, float]:
    """(qp_scale, qp_zp) of a UINT8 per-tensor quantization covering ``values`` with a margin."""
    lo, hi = float(values.min()), float(values.max())
    mid, half = (lo + hi) / 2, max(hi - lo, 1e-6) / 2 * margin
    lo, hi = min(mid - half, 0.0), max(mid + half, 0.0)
    scale = (hi - lo) / 255.0
    return scale, float(round(-lo / scale))


def write_hef(path: Path, network: str, twin: Path | None, norm: dict | None, input_shape: tuple[int, int, int],
              outputs: dict[str, tuple[str, tuple[int, ...]]], calib: np.ndarray | None = None,
              hw_arch: str = "hailo8", queue: int = 8, order: list[str] | None = None,
              scales: dict[str, float] | None = None) -> Path:
    """Write a test HEF; ``calib`` (uint8 RGB NHWC frames) sets each output's qp from the twin's range;
    ``scales`` multiplies outputs inside the "HEF" (a Mul compiled in, like the zoo SCRFD box heads)."""
    names = list(outputs)
    scales = scales or {}
    qps = {n: (0.05, 128.0) for n in names}
    if calib is not None and twin is not None:
        vals = twin_outputs(twin, norm, calib, [outputs[n][0] for n in names])
        qps = {n: calibrate(v * scales.get(n, 1.0)) for n, v in zip(names, vals, strict=True)}
    data = {
        "hailo_test_hef": 1, "network_group": network, "hw_arch": hw_arch, "async_queue_size": queue,
        "twin": str(twin) if twin else None,
        "input": {"name": f"{network}/input_layer1", "shape": list(input_shape), "twin_layout": "NCHW",
                  "normalization": norm},
        "outputs": [{"name": f"{network}/{n}", "twin_name": outputs[n][0], "shape": list(outputs[n][1]),
                     "twin_layout": "NCHW", "qp_scale": qps[n][0], "qp_zp": qps[n][1], "twin_scale": scales.get(n, 1.0)}
                    for n in (order or names)],
    }
    path.write_text(json.dumps(data, indent=1))
    return path


def with_sidecar(hef: Path, template: ModelSpec, **changes) -> Path:
    """Write ``<hef>.json``: the spec built from the HEF's introspection and ``template``."""
    spec = hef_spec(hef, template)
    if changes:
        spec = ModelSpec.model_validate({**spec.model_dump(), **changes})
    hef.with_suffix(".json").write_text(spec.model_dump_json(indent=1))
    return hef


