"""Faces found in one image: the result every detector family returns (the Detector contract)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facefleet.vision.nms import nms


@dataclass
class Detections:
    """Faces in one image: boxes ``[n,4]`` x1y1x2y2, scores ``[n]``, landmarks ``[n,5,2]``.

    Landmark order is the ArcFace template's: eye on the image's left, eye on the image's
    right, nose tip, mouth corner on the image's left, mouth corner on the image's right.
    """

    boxes: np.ndarray
    scores: np.ndarray
    kps: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def take(self, idx: np.ndarray) -> Detections:
        return Detections(self.boxes[idx], self.scores[idx], self.kps[idx])

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                          np.concatenate([p.kps for p in parts]))

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]


def top_candidates(cands: Detections, k: int) -> Detections:
    """The ``k`` best candidates: NMS is quadratic, so a model that fires everywhere (a wrong
    spec, a noisy frame) must not cost unbounded time and memory."""
    if len(cands) <= k:
        return cands
    return cands.take(np.argpartition(-cands.scores, k - 1)[:k])


def postprocess(cands: Detections, iou: float, min_face_px: float = 0.0, max_faces: int | None = None,
                max_candidates: int | None = None) -> Detections:
    """Best ``max_candidates``, NMS, then drop faces smaller than ``min_face_px`` (box height,
    in the same pixels)."""
    if len(cands) == 0:
        return cands
    if max_candidates is not None:
        cands = top_candidates(cands, max_candidates)
    keep = nms(cands.boxes, cands.scores, iou)
    det = cands.take(keep)
    if min_face_px > 0:
        det = det.take(np.flatnonzero(det.heights >= min_face_px))
    if max_faces is not None and len(det) > max_faces:
        det = det.take(np.arange(max_faces))
    return det
