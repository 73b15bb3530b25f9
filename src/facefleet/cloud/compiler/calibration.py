"""Deterministic calibration sets for the DFC: uint8 NHWC in the model's colour order.

Pixels are never normalized here: the build puts ``normalization1`` into the HEF, and the DFC
then expects raw pixels (dfc_api.md §1). The sha256 identifies the exact set in provenance.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefleet.cloud.compiler.faces import aligned_at, face_photos, list_images, read_bgr
from facefleet.cloud.compiler.spec import BuildSpec, Roots
from facefleet.errors import FacefleetError
from facefleet.recognition.models import Detector
from facefleet.vision.letterbox import letterbox

log = logging.getLogger(__name__)
IMAGE_SCALES = (1.0, 0.5, 0.25)  # whole images at these fractions of the input: near and far scenes


@dataclass
class CalibrationSet:
    data: np.ndarray  # uint8 [n, h, w, 3]
    sha256: str
    source: str

    @property
    def size(self) -> int:
        return len(self.data)


def array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _pick(items: list, n: int) -> list:
    """``n`` items spread evenly over the list (all when fewer): deterministic, covers every source."""
    if len(items) <= n:
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def _place(img: np.ndarray, w: int, h: int, frac: float) -> np.ndarray:
    """What the device feeds the detector: the runtime's letterbox (top-left, zero padding,
    ``facefleet.vision.letterbox``), of the image shrunk to ``frac`` for far scenes. Calibrating
    on another padding (grey, centred) gives the DFC activation ranges the device never sees."""
    if frac == 1.0:
        return letterbox(img, w, h)[0]
    s = frac * min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
    return letterbox(small, w, h)[0] if small.shape[1] > w or small.shape[0] > h else _top_left(small, w, h)


def _top_left(img: np.ndarray, w: int, h: int) -> np.ndarray:
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[:img.shape[0], :img.shape[1]] = img
    return canvas


def face_calibration(folder: Path, detector: Detector, size: int, face_scales, out_px: int) -> np.ndarray:
    """Aligned faces of every photo at every face scale (BGR)."""
    photos = face_photos(folder, detector)
    items = [(p, s) for s in face_scales for p in photos]
    return np.stack([aligned_at(p, s, out_px) for p, s in _pick(items, size)])


def image_calibration(folder: Path, size: int, w: int, h: int) -> np.ndarray:
    files = list_images(folder)
    items = [(f, k) for k in IMAGE_SCALES for f in files]
    cache: dict[Path, np.ndarray] = {}
    out = []
    for f, k in _pick(items, size):
        if f not in cache:
            cache[f] = read_bgr(f)
        out.append(_place(cache[f], w, h, k))
    return np.stack(out)


def build_calibration(spec: BuildSpec, roots: Roots, base: Path, detector: Detector | None = None,
                      smoke: bool = False) -> CalibrationSet:
    """The calibration set the spec describes; ``smoke`` (and only smoke) allows random data."""
    cal = spec.calibration
    h, w, _ = spec.input.hwc
    if cal.source == "random" or smoke:
        if not smoke:
            raise FacefleetError(f"{spec.name}: random calibration is for smoke builds only (--smoke)")
        rng = np.random.default_rng(cal.seed)
        data = rng.integers(0, 256, (min(cal.size, 16), h, w, 3), dtype=np.uint8)
        return CalibrationSet(data, array_sha256(data), "random (smoke)")
    folder = roots.resolve(cal.path or "", base)
    if cal.source == "faces":
        if detector is None:
            raise FacefleetError("face calibration needs a face detector")
        if h != w:
            raise FacefleetError(f"{spec.name}: face calibration needs a square input, got {w}x{h}")
        bgr = face_calibration(folder, detector, cal.size, cal.face_scales, w)
    else:
        bgr = image_calibration(folder, cal.size, w, h)
    data = np.ascontiguousarray(bgr[..., ::-1]) if spec.input.color == "RGB" else bgr
    if len(data) < cal.size:
        log.warning("%s: calibration has %d images, spec asks for %d (the DFC may lower the optimization level)",
                    spec.name, len(data), cal.size)
    return CalibrationSet(data, array_sha256(data), f"{cal.source}:{folder}")
