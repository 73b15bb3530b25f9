"""SCRFD (InsightFace), both output layouts.

``decoded``: per stride, scores ``[N,1]``, bbox distances ``[N,4]``, keypoint offsets ``[N,10]``
(with or without a leading batch dim), N = H*W*anchors, anchor-minor.
``raw_heads``: per stride the conv heads as a compiled HEF returns them: scores ``[A,H,W]``
(often logits), bbox ``[4A,H,W]`` (times a per-stride scale), kps ``[10A,H,W]``; channel-first
(NCHW, ONNX export) or channel-last (NHWC, HailoRT).
Boxes are distances from the anchor centre (cell corner, no +0.5) times the stride.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from facefleet.vision.detections import Detections
from facefleet.vision.detectors.base import DetectorConfig, OutputMismatch, above_threshold, grid, heads_by_shape, require


class Config(DetectorConfig):
    """SCRFD output layout and detection defaults."""

    layout: Literal["decoded", "raw_heads"]
    strides: tuple[int, ...] = (8, 16, 32)
    anchors_per_cell: int = Field(2, gt=0)
    scores: tuple[str, ...] = Field(description="output names, one per stride")
    bbox: tuple[str, ...]
    kps: tuple[str, ...] | None = None
    scores_are_logits: bool = False
    bbox_scales: tuple[float, ...] | None = Field(
        None, description="raw heads: per-stride multipliers of the bbox distances, for a model cut BEFORE "
                          "SCRFD's Scale (a raw-heads ONNX export). null for zoo HEFs: their box heads end at the Mul "
                          "(the scale is inside; see docs/hailo.md)")
    heads_order: Literal["NCHW", "NHWC"] = Field(
        "NCHW", description="raw heads: channel-first (ONNX export) or channel-last (as HailoRT returns them)")

    @model_validator(mode="after")
    def _per_stride(self) -> Config:
        n = len(self.strides)
        for field in ("scores", "bbox", "kps", "bbox_scales"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"detector.{field} needs one entry per stride ({n})")
        if self.kps is None:
            raise ValueError("detector.kps is required: alignment needs the 5 landmarks")
        return self

    def output_fields(self) -> tuple[str, ...]:
        return ("scores", "bbox", "kps")

    def decoder(self) -> ScrfdDecoder:
        return ScrfdDecoder(self)

    def bind_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> Config:
        a = self.anchors_per_cell
        heads = heads_by_shape(outputs, in_h, in_w, self.strides, {"scores": a, "bbox": 4 * a, "kps": 10 * a}, "SCRFD")
        return self.model_copy(update={**heads, "layout": "raw_heads", "heads_order": "NHWC"})

    def check_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> None:
        if self.layout != "raw_heads" or self.heads_order != "NHWC":
            raise OutputMismatch("a HEF returns raw heads channel-last: detector layout must be raw_heads, heads_order NHWC")
        super().check_hef(outputs, in_h, in_w)


class ScrfdDecoder:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def centers(self, h: int, w: int, stride: int) -> np.ndarray:
        """Anchor centres ``[h*w*anchors, 2]`` in input pixels (cached per grid)."""
        key = (h, w, stride)
        c = self._centers.get(key)
        if c is None:
            ys, xs = np.mgrid[:h, :w]
            c = np.stack([xs, ys], -1).reshape(-1, 1, 2).astype(np.float32) * stride
            c = np.repeat(c, self.cfg.anchors_per_cell, axis=1).reshape(-1, 2)
            self._centers[key] = c
        return c

    def check(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int) -> None:
        a = self.cfg.anchors_per_cell
        for i, s in enumerate(self.cfg.strides):
            gh, gw = grid(in_h, in_w, s)
            for names, per in ((self.cfg.scores, 1), (self.cfg.bbox, 4), (self.cfg.kps, 10)):
                require(outputs, names[i], gh * gw * a * per, f"stride {s}, {a} anchors x {per}")

    def _gather(self, head: np.ndarray, per_anchor: int, cy: np.ndarray, cx: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Pick ``per_anchor`` values for each candidate out of a raw head (NCHW or NHWC)."""
        anchors = self.cfg.anchors_per_cell
        if self.cfg.heads_order == "NCHW":
            c = head.reshape(anchors, per_anchor, head.shape[-2], head.shape[-1])
            return c[a, :, cy, cx]
        c = head.reshape(head.shape[-3], head.shape[-2], anchors, per_anchor)
        return c[cy, cx, a, :]

    def decode(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int, score_threshold: float) -> Detections:
        cfg = self.cfg
        parts = []
        for i, stride in enumerate(cfg.strides):
            gh, gw = grid(in_h, in_w, stride)
            raw_scores = outputs[cfg.scores[i]]
            if cfg.layout == "decoded":
                scores = raw_scores.reshape(-1)
            else:
                s = raw_scores.reshape(raw_scores.shape[-3:])
                scores = (s.transpose(1, 2, 0) if cfg.heads_order == "NCHW" else s).reshape(-1)
            idx, sc = above_threshold(scores, score_threshold, cfg.scores_are_logits)
            if idx.size == 0:
                continue
            centers = self.centers(gh, gw, stride)[idx]
            if cfg.layout == "decoded":
                dist = outputs[cfg.bbox[i]].reshape(-1, 4)[idx]
                kp = outputs[cfg.kps[i]].reshape(-1, 10)[idx]
            else:
                cell, a = np.divmod(idx, cfg.anchors_per_cell)
                cy, cx = np.divmod(cell, gw)
                dist = self._gather(outputs[cfg.bbox[i]], 4, cy, cx, a)
                kp = self._gather(outputs[cfg.kps[i]], 10, cy, cx, a)
                if cfg.bbox_scales is not None:
                    dist = dist * cfg.bbox_scales[i]
            dist = dist.astype(np.float32) * stride
            boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
            kps = kp.astype(np.float32).reshape(-1, 5, 2) * stride + centers[:, None, :]
            parts.append(Detections(boxes, sc, kps))
        return Detections.concat(parts)
