"""SCRFD decoding for both output layouts, vectorized.

``decoded``: per stride, scores ``[N,1]``, bbox distances ``[N,4]``, keypoint offsets ``[N,10]``
(with or without a leading batch dim), N = H*W*anchors, anchor-minor.
``raw_heads``: per stride the conv heads as a compiled HEF returns them: scores ``[A,H,W]``
(often logits), bbox ``[4A,H,W]`` (times a per-stride scale), kps ``[10A,H,W]``; channel-first
(NCHW, ONNX export) or channel-last (NHWC, HailoRT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facefleet.vision.nms import nms


@dataclass
class Detections:
    """Faces in one image: boxes ``[n,4]`` x1y1x2y2, scores ``[n]``, landmarks ``[n,5,2]``."""

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


@dataclass
class ScrfdLayout:
    """The parts of a detector spec the decoder needs (kept free of pydantic for speed)."""

    kind: str                       # "decoded" | "raw_heads"
    strides: tuple[int, ...]
    anchors: int
    scores: tuple[str, ...]
    bbox: tuple[str, ...]
    kps: tuple[str, ...]
    logits: bool = False
    bbox_scales: tuple[float, ...] | None = None
    heads_order: str = "NCHW"       # raw heads only
    _centers: dict = field(default_factory=dict, repr=False)

    def centers(self, h: int, w: int, stride: int) -> np.ndarray:
        """Anchor centres ``[h*w*anchors, 2]`` in input pixels (cached per grid)."""
        key = (h, w, stride)
        c = self._centers.get(key)
        if c is None:
            ys, xs = np.mgrid[:h, :w]
            c = np.stack([xs, ys], -1).reshape(-1, 1, 2).astype(np.float32) * stride
            c = np.repeat(c, self.anchors, axis=1).reshape(-1, 2)
            self._centers[key] = c
        return c


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gather_raw(head: np.ndarray, per_anchor: int, anchors: int, order: str,
                cell_y: np.ndarray, cell_x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Pick ``per_anchor`` values for each candidate out of a raw head (NCHW or NHWC)."""
    if order == "NCHW":
        c = head.reshape(anchors, per_anchor, head.shape[-2], head.shape[-1])
        return c[a, :, cell_y, cell_x]
    c = head.reshape(head.shape[-3], head.shape[-2], anchors, per_anchor)
    return c[cell_y, cell_x, a, :]


def decode(outputs: dict[str, np.ndarray], layout: ScrfdLayout, in_w: int, in_h: int,
           score_threshold: float) -> Detections:
    """Candidates above ``score_threshold`` in detector-input pixels (before NMS)."""
    parts = []
    for i, stride in enumerate(layout.strides):
        gh, gw = -(-in_h // stride), -(-in_w // stride)
        raw_scores = outputs[layout.scores[i]]
        if layout.kind == "decoded":
            scores = raw_scores.reshape(-1)
        else:
            s = raw_scores.reshape(raw_scores.shape[-3:])
            scores = (s.transpose(1, 2, 0) if layout.heads_order == "NCHW" else s).reshape(-1)
        if layout.logits:
            # threshold in logit space: one exp per candidate, not per anchor
            thr = np.log(score_threshold / (1 - score_threshold)) if 0 < score_threshold < 1 else -np.inf
            idx = np.flatnonzero(scores >= thr)
            sc = _sigmoid(scores[idx].astype(np.float32))
        else:
            idx = np.flatnonzero(scores >= score_threshold)
            sc = scores[idx].astype(np.float32)
        if idx.size == 0:
            continue
        centers = layout.centers(gh, gw, stride)[idx]
        if layout.kind == "decoded":
            dist = outputs[layout.bbox[i]].reshape(-1, 4)[idx]
            kp = outputs[layout.kps[i]].reshape(-1, 10)[idx]
        else:
            cell, a = np.divmod(idx, layout.anchors)
            cy, cx = np.divmod(cell, gw)
            order = layout.heads_order
            dist = _gather_raw(outputs[layout.bbox[i]], 4, layout.anchors, order, cy, cx, a)
            kp = _gather_raw(outputs[layout.kps[i]], 10, layout.anchors, order, cy, cx, a)
            if layout.bbox_scales is not None:
                dist = dist * layout.bbox_scales[i]
        dist = dist.astype(np.float32) * stride
        boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
        kps = kp.astype(np.float32).reshape(-1, 5, 2) * stride + centers[:, None, :]
        parts.append(Detections(boxes, sc, kps))
    return Detections.concat(parts)


def postprocess(cands: Detections, iou: float, min_face_px: float = 0.0, max_faces: int | None = None) -> Detections:
    """NMS, then drop faces smaller than ``min_face_px`` (box height, in the same pixels)."""
    if len(cands) == 0:
        return cands
    keep = nms(cands.boxes, cands.scores, iou)
    det = cands.take(keep)
    if min_face_px > 0:
        det = det.take(np.flatnonzero(det.heights >= min_face_px))
    if max_faces is not None and len(det) > max_faces:
        det = det.take(np.arange(max_faces))
    return det
