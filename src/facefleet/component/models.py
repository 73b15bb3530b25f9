"""Which model files a configuration names, and loading them as a checked pair.

Used both to VALIDATE a proposed configuration (load + self-test, then close) and to SWAP
(load beside the serving models). Relative paths resolve against the artifacts folder; for the
hailo backend an empty ``HAILO_REC_HEF`` falls back to the Greengrass v1 environment variable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from facefleet.config import ComponentConfig
from facefleet.errors import FacefleetError
from facefleet.modelspec import sha256_file
from facefleet.runtime import BackendPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPaths:
    backend: str
    detector: Path | None  # None: the default model
    recognizer: Path | None


def _resolve(value: str | None, artifacts: Path | None) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and artifacts is not None:
        p = artifacts / p
    return p


def model_paths(cfg: ComponentConfig, artifacts: Path | None, environ: Mapping[str, str] = os.environ) -> ModelPaths:
    m = cfg.models
    if m.backend == "hailo":
        rec = cfg.HAILO_REC_HEF
        env = environ.get("HAILO_REC_HEF", "")
        if rec:
            if env and env != rec:
                log.info("HAILO_REC_HEF: component configuration %r wins over environment %r", rec, env)
        elif env:
            log.info("HAILO_REC_HEF: configuration empty, using the environment variable (Greengrass v1) %r", env)
            rec = env
        if not rec or not cfg.HAILO_DET_HEF:
            raise FacefleetError("backend hailo needs HAILO_DET_HEF and HAILO_REC_HEF (configuration or environment)")
        return ModelPaths("hailo", _resolve(cfg.HAILO_DET_HEF, artifacts), _resolve(rec, artifacts))
    return ModelPaths("onnx", _resolve(m.detector, artifacts), _resolve(m.recognizer, artifacts))


def check_files(cfg: ComponentConfig, paths: ModelPaths) -> None:
    """Existence and the configured sha256, before anything is loaded."""
    for role, p, want in (("detector", paths.detector, cfg.models.detector_sha256),
                          ("recognizer", paths.recognizer, cfg.models.recognizer_sha256)):
        if p is not None and not p.is_file():
            raise FacefleetError(f"{role} model file not found: {p}")
        if want is not None and p is not None:  # the default model's pin is checked when it loads (loader.check_pin)
            got = sha256_file(p)
            if got != want:
                raise FacefleetError(f"{role} model {p.name}: sha256 {got[:12]}... does not match models.{role}_sha256 {want[:12]}...")


def load_pair(cfg: ComponentConfig, paths: ModelPaths, backends: BackendPool, canary=None):
    """Load and self-test both models (the Detector/Recognizer constructors run the self-test)
    on the owner's backend (one VDevice per process on a Hailo), then probe their quality."""
    from facefleet.recognition.canary import Canary
    from facefleet.recognition.loader import load_models

    check_files(cfg, paths)
    pair = load_models(backends.get(paths.backend), cfg, paths.detector, paths.recognizer)
    # -- quality canary (issue 15.1): out of tolerance raises, the pair is closed, nothing serves it --
    try:
        pair.canary = (canary or Canary()).check(pair, paths.detector, paths.recognizer)
    except Exception:
        pair.close()
        raise
    return pair
