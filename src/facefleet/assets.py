"""Where the shared assets live: ``$FACEFLEET_ASSETS``, else ``../shared/assets`` from the repo."""

from __future__ import annotations

import os
from pathlib import Path

from facefleet.errors import FacefleetError

ENV = "FACEFLEET_ASSETS"
DEFAULT_DETECTOR = "models/det_500m.onnx"
DEFAULT_RECOGNIZER = "models/w600k_mbf_fp32.onnx"


def assets_dir() -> Path:
    env = os.environ.get(ENV)
    if env:
        p = Path(env)
    else:
        here = Path(__file__).resolve()
        candidates = [here.parents[3] / "shared" / "assets", Path.cwd().parent / "shared" / "assets"]
        p = next((c for c in candidates if c.is_dir()), candidates[-1])
    if not p.is_dir():
        raise FacefleetError(f"assets folder not found: {p} (set {ENV})")
    return p


def default_model(kind: str) -> Path:
    return assets_dir() / (DEFAULT_DETECTOR if kind == "detector" else DEFAULT_RECOGNIZER)
