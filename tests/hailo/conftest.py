"""Hailo tests: put the ``hailo_platform`` double (tests/hailo/doubles) first on sys.path and
write the test "HEF" files (see hailo_hefs.py) once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "doubles"))

from hailo_platform.pyhailort import pyhailort

from facefleet.modelspec import resolve_model
from facefleet.runtime.hailo import HailoBackend
from facefleet.vision.letterbox import letterbox

from .hailo_hefs import ARCFACE, SCRFD_2_5G, SCRFD_2_5G_BOX_SCALES, TWIN_NORM, catalog_spec, with_sidecar, write_hef


@pytest.fixture(scope="session")
def hailo_calibration(assets, clip_frames, people):
    """Calibration sets: letterboxed RGB clip frames for SCRFD, aligned RGB faces for ArcFace."""
    frames = []
    for i in (0, 120, 230):
        canvas, _ = letterbox(clip_frames[i], 640, 640)
        frames.append(canvas[..., ::-1])
    _, crops = people
    return np.stack(frames), np.ascontiguousarray(crops[::4][..., ::-1])


@pytest.fixture(scope="session")
def hefs(tmp_path_factory, assets, hailo_calibration):
    """Test HEFs (+ sidecar specs): ``det`` = the zoo's scrfd_2_5g (twin scrfd_2.5g_rawheads, bbox scales
    inside as in the zoo HEF), ``rec`` =
    arcface_mobilefacenet (twin w600k_mbf_fp32, 512-d fc1)."""
    d = tmp_path_factory.mktemp("hefs")
    det_frames, rec_crops = hailo_calibration
    models = assets / "models"
    # outputs listed in a shuffled order: the backend must map heads by shape, not by position
    order = ["conv57", "conv42", "conv50", "conv44", "conv55", "conv43", "conv51", "conv49", "conv56"]
    det = write_hef(d / "scrfd_2_5g.hef", "scrfd_2_5g", models / "scrfd_2.5g_rawheads.onnx", TWIN_NORM["scrfd"],
                    (640, 640, 3), SCRFD_2_5G, det_frames, order=order, scales=SCRFD_2_5G_BOX_SCALES)
    rec = write_hef(d / "arcface_mobilefacenet.hef", "arcface_mobilefacenet", models / "w600k_mbf_fp32.onnx",
                    TWIN_NORM["arcface"], (112, 112, 3), ARCFACE, rec_crops)
    with_sidecar(det, catalog_spec("scrfd_2.5g_rawheads"), name="scrfd_2_5g")
    with_sidecar(rec, catalog_spec("w600k_mbf_fp32"), name="arcface_mobilefacenet")
    return {"det": det, "rec": rec, "dir": d}


@pytest.fixture(params=pyhailort.SURFACES)
def surface(request):
    """Each HailoRT line the backend supports (the double's surfaces): 4.18.0, 4.20.1, 4.23.0."""
    before = ".".join(map(str, pyhailort.DOUBLE.version))
    pyhailort.use_surface(request.param)
    yield request.param
    pyhailort.use_surface(before)


_KNOBS = ("devices", "arch", "held_by_other_process", "service_running", "temperature", "throttling", "latency_s",
          "fail_next_jobs", "fail_status")


@pytest.fixture
def machine():
    """The double's simulated machine; restored after the test."""
    m = pyhailort.DOUBLE
    saved = {k: getattr(m, k) for k in _KNOBS}
    m.warnings.clear()
    yield m
    m.release_stalled()
    m.unstall()
    for k, v in saved.items():
        setattr(m, k, list(v) if isinstance(v, list) else v)


@pytest.fixture
def hailo_backend():
    b = HailoBackend()
    yield b
    b.close()


@pytest.fixture
def hailo_models(hailo_backend, hefs):
    """(backend, detector model, recognizer model) on one VDevice."""
    det = hailo_backend.load(resolve_model(hefs["det"], kind="detector"))
    rec = hailo_backend.load(resolve_model(hefs["rec"], kind="recognizer"))
    return hailo_backend, det, rec
