"""Face photos seen as a camera would see them: scaled to a given face height, aligned or placed.

Shared by the calibration builder and the fidelity report so both simulate distance the same
way: the photo is resampled so the detected face box is ``px`` tall, then aligned from there,
which is what a small face in a real frame gives the recognizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefleet.errors import FacefleetError
from facefleet.recognition.models import Detector
from facefleet.vision.align import align_faces

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class FacePhoto:
    path: Path
    label: str
    image: np.ndarray  # BGR, at most max_side
    box: np.ndarray  # x1 y1 x2 y2 of the largest face
    kps: np.ndarray  # 5x2


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FacefleetError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FacefleetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def read_bgr(path: Path, max_side: int = 1600) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FacefleetError(f"cannot read image {path}")
    s = max_side / max(img.shape[:2])
    return cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img


def face_photos(folder: Path, detector: Detector) -> list[FacePhoto]:
    """The largest face of every photo (label = parent folder name); photos without a face are skipped."""
    out = []
    for f in list_images(folder):
        img = read_bgr(f)
        det = detector.detect(img)
        if len(det) == 0:
            continue
        i = int(np.argmax(det.heights * (det.boxes[:, 2] - det.boxes[:, 0])))
        out.append(FacePhoto(f, f.parent.name, img, det.boxes[i].copy(), det.kps[i].copy()))
    if not out:
        raise FacefleetError(f"no face found in the images of {folder}")
    return out


def scaled_region(photo: FacePhoto, face_px: float, margin: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The area around the face resampled so the face box is ``face_px`` tall: (image, box, kps) in its pixels."""
    x1, y1, x2, y2 = photo.box
    bh = max(y2 - y1, 1.0)
    f = face_px / bh
    h, w = photo.image.shape[:2]
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, bh * (0.5 + margin)
    ox, oy = int(max(0, cx - r)), int(max(0, cy - r))
    region = photo.image[oy:int(min(h, cy + r)), ox:int(min(w, cx + r))]
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(region, None, fx=f, fy=f, interpolation=interp)
    off = np.array([ox, oy], np.float32)
    box = ((photo.box.reshape(2, 2) - off) * f).reshape(4)
    return scaled, box, (photo.kps - off) * f


def aligned_at(photo: FacePhoto, face_px: float, size: int = 112) -> np.ndarray:
    """Aligned ``size`` crop of the face as it looks when ``face_px`` tall (upsampled from the small face)."""
    img, _, kps = scaled_region(photo, face_px)
    return align_faces(img, kps[None].astype(np.float32), size)[0].copy()
