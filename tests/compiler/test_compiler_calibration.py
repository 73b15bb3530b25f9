"""Calibration sets: real faces at several scales, deterministic, raw uint8 in the model's colour order."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from facefleet.cloud.compiler.calibration import build_calibration
from facefleet.cloud.compiler.faces import aligned_at, face_photos
from facefleet.cloud.compiler.spec import Roots, parse_build_spec
from facefleet.errors import FacefleetError

SPECS = Path(__file__).parents[2] / "build" / "specs"


def _spec(name: str, **calibration):
    d = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    d["calibration"].update(calibration)
    return parse_build_spec(d, name)


@pytest.fixture(scope="module")
def small_faces(tmp_path_factory, assets):
    """Three identities of faces/people, linked (not copied) into a temporary folder."""
    root = tmp_path_factory.mktemp("faces")
    for ident in sorted((assets / "faces" / "people").iterdir())[:3]:
        (root / ident.name).mkdir()
        for f in sorted(ident.glob("*.jpg"))[:2]:
            (root / ident.name / f.name).symlink_to(f)
    return root


def test_face_calibration_is_deterministic_scaled_and_raw(small_faces, load_detector):
    det = load_detector()
    spec = _spec("w600k_mbf", path=str(small_faces), size=12, face_scales=[112, 28])
    a = build_calibration(spec, Roots(), SPECS, detector=det)
    b = build_calibration(spec, Roots(), SPECS, detector=det)
    assert a.data.dtype == np.uint8 and a.data.shape == (12, 112, 112, 3)
    assert a.sha256 == b.sha256 and np.array_equal(a.data, b.data)
    assert a.data.max() > 200 and a.data.min() < 50  # raw pixels, not normalized
    photos = face_photos(small_faces, det)
    near, far = aligned_at(photos[0], 112), aligned_at(photos[0], 28)
    # RGB for an RGB model: the first item is the first photo at the first scale, colour-swapped
    assert np.array_equal(a.data[0], near[..., ::-1])
    # the 28 px version has lost detail: less high-frequency energy than the 112 px one
    assert np.abs(np.diff(far.astype(float), axis=1)).mean() < np.abs(np.diff(near.astype(float), axis=1)).mean()
    other = build_calibration(_spec("w600k_mbf", path=str(small_faces), size=12, face_scales=[112, 40]), Roots(), SPECS,
                              detector=det)
    assert other.sha256 != a.sha256


def test_image_calibration_for_detectors(small_faces):
    spec = _spec("scrfd_500m", path=str(small_faces), size=5)
    cal = build_calibration(spec, Roots(), SPECS)
    assert cal.data.shape == (5, 640, 640, 3) and cal.data.dtype == np.uint8
    assert len({x.tobytes() for x in cal.data}) == 5


def test_image_calibration_is_what_the_device_feeds(tmp_path):
    """Calibrate on exactly the runtime's letterbox: top-left, zero padding (not grey, not centred)."""
    from facefleet.cloud.compiler.faces import read_bgr
    from facefleet.vision.letterbox import letterbox

    folder = tmp_path / "imgs"
    folder.mkdir()
    img = np.random.default_rng(0).integers(1, 255, (360, 640, 3)).astype(np.uint8)  # 16:9, no zero pixel
    cv2.imwrite(str(folder / "a.png"), img)
    spec = _spec("scrfd_500m", path=str(folder), size=3)
    cal = build_calibration(spec, Roots(), SPECS)
    full = letterbox(read_bgr(folder / "a.png"), 640, 640)[0][..., ::-1]  # RGB, like the HEF input
    np.testing.assert_array_equal(cal.data[0], full)
    for far in cal.data[1:]:  # far scenes: shrunk, still top-left with zeros around
        assert far[0, 0].any() and not far[-1, -1].any() and not far[:, -1].any()


def test_empty_folder_and_random_rules(tmp_path, load_detector):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacefleetError, match="no images"):
        build_calibration(_spec("w600k_mbf", path=str(tmp_path / "empty")), Roots(), SPECS, detector=load_detector())
    with pytest.raises(FacefleetError, match="image folder not found"):
        build_calibration(_spec("w600k_mbf", path=str(tmp_path / "missing")), Roots(), SPECS, detector=load_detector())
    with pytest.raises(FacefleetError, match="smoke builds only"):
        build_calibration(_spec("w600k_mbf", source="random"), Roots(), SPECS)
    smoke = build_calibration(_spec("w600k_mbf", source="random", size=4), Roots(), SPECS, smoke=True)
    assert smoke.data.shape == (4, 112, 112, 3) and smoke.source == "random (smoke)"


def test_no_faces_in_images(tmp_path, load_detector):
    import cv2

    (tmp_path / "x").mkdir()
    cv2.imwrite(str(tmp_path / "x" / "grey.png"), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(FacefleetError, match="no face found"):
        build_calibration(_spec("w600k_mbf", path=str(tmp_path)), Roots(), SPECS, detector=load_detector())
