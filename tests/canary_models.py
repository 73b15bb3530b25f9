"""Model folders for the quality-canary tests, made at run time from the real models: the ONNX
files (symlinked), their probe sets built by ``facefleet build probes`` from the float recognizer
and the operator's photos, and a ``wrong/`` folder whose recognizer sidecar has the WRONG
normalization (mean 0, std 1 instead of 127.5/127.5) beside the same ONNX file and probes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from facefleet.cloud.compiler.probes import build_probes
from facefleet.modelspec import resolve_model

DET, FP32, INT8 = "det_500m.onnx", "w600k_mbf_fp32.onnx", "w600k_mbf_int8dyn.onnx"


def canary_models(folder: Path, assets: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (DET, FP32, INT8):
        (folder / name).symlink_to(assets / "models" / name)
    faces = assets / "faces" / "people"
    for name in (DET, FP32, INT8):
        build_probes(folder / name, faces, float_model=None if name == DET else folder / FP32, count=count)
    wrong = folder / "wrong"
    wrong.mkdir()
    (wrong / FP32).symlink_to(assets / "models" / FP32)
    spec = resolve_model(folder / FP32).spec.model_dump(mode="json")
    spec["normalization"] = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    (wrong / "w600k_mbf_fp32.json").write_text(json.dumps(spec))
    shutil.copy(folder / "w600k_mbf_fp32.probes.npz", wrong)
    return folder
