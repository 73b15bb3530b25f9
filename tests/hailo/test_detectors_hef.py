"""Detector families on the Hailo side: ``facefleet hailo spec`` binds each family's heads by
shape, the HEF spec is checked, and the same Detector contract runs on the HailoRT double."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefleet.cli import main
from facefleet.errors import FacefleetError
from facefleet.modelspec import resolve_model
from facefleet.recognition.models import Detector
from facefleet.runtime.hailo import HailoBackend
from facefleet.vision.letterbox import letterbox
from facefleet.vision.nms import iou_matrix

from .hailo_hefs import write_hef

ROOT = Path(__file__).resolve().parents[2]
ZOO_RETINAFACE = ROOT / "build" / "specs" / "zoo" / "retinaface_mobilenet_v1.json"


def test_yolov8_face_hef_from_the_onnx_template(assets, tmp_path, load_detector, capsys):
    """A YOLOv8-face HEF (raw per-stride heads, channel-last; the twin is the shared ONNX) gets
    its sidecar from the ONNX's catalog spec and finds the faces the ONNX finds."""
    onnx = assets / "models" / "yolov8_lite_t_face.onnx"
    photos = [cv2.imread(str(assets / "faces" / n)) for n in ("couple.jpg", "selfie-many-people.jpg")]
    calib = np.stack([letterbox(p, 640, 640, center=True)[0][..., ::-1] for p in photos])
    hef = write_hef(tmp_path / "yolov8_face.hef", "yolov8_face", onnx, {"mean": [0.0] * 3, "std": [255.0] * 3},
                    (640, 640, 3), {"conv71": ("892", (20, 20, 80)), "conv57": ("output0", (80, 80, 80)),
                                    "conv64": ("884", (40, 40, 80))}, calib=calib)
    assert main(["hailo", "spec", str(hef), "--template", "yolov8_lite_t_face"]) == 0
    spec = resolve_model(hef).spec
    d = spec.detector
    assert d.layout == "yolov8_face" and d.heads_order == "NHWC"
    assert d.heads == ("yolov8_face/conv57", "yolov8_face/conv64", "yolov8_face/conv71")  # by grid, not by order
    assert spec.input.letterbox == "center" and spec.normalization is None
    backend = HailoBackend()
    try:
        on_hef = Detector(backend.load(resolve_model(hef)))
        for img in photos:
            ref, got = load_detector("yolov8_lite_t_face").detect(img), on_hef.detect(img)
            assert len(got) == len(ref)
            ious = iou_matrix(ref.boxes, got.boxes)
            assert (ious.max(axis=1) > 0.85).all(), ious.max(axis=1)  # UINT8 outputs: close, not equal
            err = np.linalg.norm(ref.kps - got.kps[ious.argmax(axis=1)], axis=2).max(axis=1)
            assert (err < 0.1 * ref.heights).all()
    finally:
        backend.close()


def test_zoo_retinaface_hef_layout(tmp_path, capsys):
    """The zoo's retinaface_mobilenet_v1 (736x1280, per-stride loc/conf/landmarks heads: 8/4/20
    channels) is described by data: its template binds the HEF's heads by shape."""
    grids = [(92, 160), (46, 80), (23, 40)]  # strides 8, 16, 32 of 736x1280
    outputs, n = {}, 20
    for h, w in grids:
        for ch in (8, 4, 20):
            outputs[f"conv{n}"] = ("-", (h, w, ch))
            n += 1
    hef = write_hef(tmp_path / "retinaface_mobilenet_v1.hef", "retinaface_mobilenet_v1", None, None,
                    (736, 1280, 3), outputs)
    assert main(["hailo", "spec", str(hef), "--template", str(ZOO_RETINAFACE)]) == 0
    spec = resolve_model(hef).spec
    d = spec.detector
    assert d.layout == "retinaface" and d.outputs == "per_stride" and not d.conf_is_softmax
    assert d.loc == ("retinaface_mobilenet_v1/conv20", "retinaface_mobilenet_v1/conv23", "retinaface_mobilenet_v1/conv26")
    assert d.conf == ("retinaface_mobilenet_v1/conv21", "retinaface_mobilenet_v1/conv24", "retinaface_mobilenet_v1/conv27")
    assert (spec.input.width, spec.input.height, spec.input.color) == (1280, 736, "RGB")
    backend = HailoBackend()
    try:
        det = Detector(backend.load(resolve_model(hef)))  # self-test: every head has the size the priors imply
        assert len(det.detect(np.zeros((720, 1280, 3), np.uint8))) == 0
    finally:
        backend.close()
    # a spec whose heads are swapped is refused in one line, naming the fit by shape
    bad = json.loads(hef.with_suffix(".json").read_text())
    bad["detector"]["loc"], bad["detector"]["conf"] = bad["detector"]["conf"], bad["detector"]["loc"]
    hef.with_suffix(".json").write_text(json.dumps(bad))
    backend = HailoBackend()
    try:
        with pytest.raises(FacefleetError, match=r"detector\.loc .* do not fit the HEF outputs; by shape they are") as e:
            backend.load(resolve_model(hef))
        assert "\n" not in str(e.value)
    finally:
        backend.close()
