"""Shared fixtures: the real models and photos in shared/assets, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefleet.assets import assets_dir
from facefleet.config import PipelineConfig
from facefleet.modelspec import resolve_model
from facefleet.recognition.loader import largest_face_crop
from facefleet.recognition.models import Detector, Recognizer
from facefleet.runtime.onnx import OnnxBackend

RECOGNIZERS = ["w600k_mbf_fp32", "w600k_mbf_int8dyn", "mobilefacenet_128"]


@pytest.fixture(scope="session")
def assets() -> Path:
    return assets_dir()


@pytest.fixture(scope="session")
def backend() -> OnnxBackend:
    return OnnxBackend()


@pytest.fixture(scope="session")
def model_path(assets):
    return lambda name: assets / "models" / f"{name}.onnx"


@pytest.fixture(scope="session")
def load_detector(backend, model_path):
    cache: dict = {}

    def get(name: str = "det_500m", **kw) -> Detector:
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = Detector(backend.load(resolve_model(model_path(name))), **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def load_recognizer(backend, model_path):
    cache: dict = {}

    def get(name: str = "w600k_mbf_fp32") -> Recognizer:
        if name not in cache:
            cache[name] = Recognizer(backend.load(resolve_model(model_path(name))))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def people(assets, load_detector):
    """faces/people: (labels, aligned crops of the largest face per photo)."""
    det = load_detector()
    files = sorted((assets / "faces" / "people").glob("*/*.jpg"))
    labels, crops = [], []
    for f in files:
        crop = largest_face_crop(det, cv2.imread(str(f)))
        assert crop is not None, f"no face in {f}"
        labels.append(f.parent.name)
        crops.append(crop)
    return np.array(labels), np.stack(crops)


@pytest.fixture(scope="session")
def clip_frames(assets):
    cap = cv2.VideoCapture(str(assets / "video" / "hamilton_clip.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


@pytest.fixture
def cfg() -> PipelineConfig:
    return PipelineConfig(device="test")


@pytest.fixture(scope="session")
def cli_env(assets) -> dict:
    env = dict(os.environ)
    env["FACEFLEET_ASSETS"] = str(assets)
    env.pop("FACEFLEET_DEBUG", None)
    return env


# ---- a real mosquitto on loopback (component and fault tests) --------------------------------------
@pytest.fixture
def broker(tmp_path):
    from component.broker import Broker, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: run ./scripts/test (it installs the Debian package)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def collector(broker):
    from component.broker import Collector

    c = Collector(broker.port)
    assert c.subscribed.wait(10), "collector did not subscribe"
    yield c
    c.close()
