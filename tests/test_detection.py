import cv2
import numpy as np
import pytest

from facefleet.vision.letterbox import Letterbox, input_size, letterbox
from facefleet.vision.nms import iou_matrix, nms

DETECTORS = ["det_500m", "scrfd_500m_kps", "scrfd_2.5g_kps", "scrfd_2.5g_rawheads"]


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize(("photo", "expected"), [("selfie-many-people.jpg", 6), ("couple.jpg", 2)])
def test_face_counts(assets, load_detector, name, photo, expected):
    img = cv2.imread(str(assets / "faces" / photo))
    dets = load_detector(name).detect(img)
    assert len(dets) == expected
    # the landmarks' centre lies inside its box: boxes and landmarks are in the same frame pixels
    c = dets.kps.mean(axis=1)
    b = dets.boxes
    assert ((c[:, 0] > b[:, 0]) & (c[:, 0] < b[:, 2]) & (c[:, 1] > b[:, 1]) & (c[:, 1] < b[:, 3])).all()


@pytest.mark.parametrize("photo", ["selfie-many-people.jpg", "couple.jpg", "img11_reflection.jpg"])
def test_raw_heads_match_decoded(assets, load_detector, photo):
    img = cv2.imread(str(assets / "faces" / photo))
    dec = load_detector("scrfd_2.5g_kps").detect(img)
    raw = load_detector("scrfd_2.5g_rawheads").detect(img)
    assert len(dec) == len(raw) > 0
    ious = iou_matrix(dec.boxes, raw.boxes)
    assert (ious.max(axis=1) >= 0.95).all(), ious.max(axis=1)
    match = ious.argmax(axis=1)
    assert np.abs(dec.kps - raw.kps[match]).max() < 0.05 * dec.heights.min()


def test_raw_heads_nhwc_equals_nchw(assets, load_detector):
    """HailoRT returns heads channel-last; the decoder must give the same faces."""
    det = load_detector("scrfd_2.5g_rawheads")
    img = cv2.imread(str(assets / "faces" / "selfie-many-people.jpg"))
    canvas, _ = letterbox(img, 640, 640)
    out = det.model.run(canvas[None])
    nhwc = {k: np.ascontiguousarray(v[0].transpose(1, 2, 0)) for k, v in out.items()}
    a = det.decoder.decode(out, 640, 640, 0.5)
    nhwc_spec = det.spec.detector.model_copy(update={"heads_order": "NHWC"})
    b = nhwc_spec.decoder().decode(nhwc, 640, 640, 0.5)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-6)
    np.testing.assert_allclose(a.kps, b.kps, rtol=1e-6)


def test_dynamic_input_keeps_aspect(load_detector):
    det = load_detector("det_500m")
    assert det.input_size_for(640, 360) == (640, 384)  # not padded to a square
    assert det.input_size_for(1280, 720) == (640, 384)
    assert load_detector("scrfd_500m_kps").input_size_for(640, 360) == (640, 640)
    assert input_size(100, 1000, None, None, 640, 32) == (64, 640)


def test_score_threshold_and_min_size(assets, load_detector):
    img = cv2.imread(str(assets / "faces" / "selfie-many-people.jpg"))
    all_faces = load_detector("det_500m").detect(img)
    strict = load_detector("det_500m", score_threshold=0.7).detect(img)
    assert 0 < len(strict) < len(all_faces) and (strict.scores >= 0.7).all()
    cutoff = float(np.sort(all_faces.heights)[2])
    big = load_detector("det_500m", min_face_px=cutoff).detect(img)
    assert len(big) == (all_faces.heights >= cutoff).sum() and (big.heights >= cutoff).all()


def test_letterbox_maps_back():
    img = np.zeros((360, 640, 3), np.uint8)
    canvas, lb = letterbox(img, 320, 320)
    assert canvas.shape == (320, 320, 3) and lb.scale == 0.5
    pts = np.array([[10.0, 20.0, 300.0, 150.0]])
    np.testing.assert_allclose(lb.to_frame(pts.copy()), pts / 0.5)
    shifted = Letterbox(scale=2.0, offset_x=100, offset_y=50)
    np.testing.assert_allclose(shifted.to_frame(np.array([[4.0, 6.0]])), [[102.0, 53.0]])


def test_nms_keeps_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]
