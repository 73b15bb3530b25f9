"""YuNet (libfacedetection / OpenCV FaceDetectorYN): anchor-free, one point per cell.

Per stride: ``cls``, ``obj`` (probabilities: sigmoid in the graph), ``bbox [N,4]``,
``kps [N,10]``, N = H*W row-major. Score = sqrt(cls*obj) (OpenCV ``FaceDetectorYN``; the
training repo's script uses cls*obj: same ranking, another threshold scale). Cell origin
WITHOUT +0.5: cx = (col + b0)*s, cy = (row + b1)*s, w = exp(b2)*s, h = exp(b3)*s; landmark k:
((col + kps[2k])*s, (row + kps[2k+1])*s). Source: ASSETS.md "other detector families".
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from facefleet.vision.detections import Detections
from facefleet.vision.detectors.base import DetectorConfig, grid, require, sigmoid


class Config(DetectorConfig):
    layout: Literal["yunet"]
    strides: tuple[int, ...] = (8, 16, 32)
    cls: tuple[str, ...] = Field(description="output names, one per stride")
    obj: tuple[str, ...]
    bbox: tuple[str, ...]
    kps: tuple[str, ...]
    score: Literal["sqrt", "product"] = Field("sqrt", description="sqrt(cls*obj) (OpenCV) or cls*obj")
    scores_are_logits: bool = Field(False, description="True when cls/obj leave the model before their sigmoid")
    cell_offset: float = Field(0.0, description="added to the cell index before scaling (YuNet: 0, no +0.5)")
    nms_iou: float = Field(0.3, gt=0, le=1)

    @model_validator(mode="after")
    def _per_stride(self) -> Config:
        n = len(self.strides)
        for f in self.output_fields():
            if len(getattr(self, f)) != n:
                raise ValueError(f"detector.{f} needs one entry per stride ({n})")
        return self

    def output_fields(self) -> tuple[str, ...]:
        return ("cls", "obj", "bbox", "kps")

    def decoder(self) -> YunetDecoder:
        return YunetDecoder(self)


class YunetDecoder:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._cells: dict[tuple[int, int], np.ndarray] = {}

    def cells(self, gh: int, gw: int) -> np.ndarray:
        c = self._cells.get((gh, gw))
        if c is None:
            ys, xs = np.mgrid[:gh, :gw]
            c = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) + self.cfg.cell_offset
            self._cells[(gh, gw)] = c
        return c

    def check(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int) -> None:
        cfg = self.cfg
        for i, s in enumerate(cfg.strides):
            gh, gw = grid(in_h, in_w, s)
            for names, per in ((cfg.cls, 1), (cfg.obj, 1), (cfg.bbox, 4), (cfg.kps, 10)):
                require(outputs, names[i], gh * gw * per, f"stride {s}, {gh}x{gw} cells x {per}")

    def decode(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int, score_threshold: float) -> Detections:
        cfg = self.cfg
        parts = []
        for i, s in enumerate(cfg.strides):
            gh, gw = grid(in_h, in_w, s)
            cls = outputs[cfg.cls[i]].reshape(-1).astype(np.float32)
            obj = outputs[cfg.obj[i]].reshape(-1).astype(np.float32)
            if cfg.scores_are_logits:
                cls, obj = sigmoid(cls), sigmoid(obj)
            p = np.clip(cls, 0, 1) * np.clip(obj, 0, 1)
            scores = np.sqrt(p) if cfg.score == "sqrt" else p
            idx = np.flatnonzero(scores >= score_threshold)
            if idx.size == 0:
                continue
            cell = self.cells(gh, gw)[idx]
            b = outputs[cfg.bbox[i]].reshape(-1, 4)[idx].astype(np.float32)
            k = outputs[cfg.kps[i]].reshape(-1, 10)[idx].astype(np.float32).reshape(-1, 5, 2)
            centre = (cell + b[:, :2]) * s
            half = np.exp(b[:, 2:]) * s / 2
            boxes = np.concatenate([centre - half, centre + half], axis=1)
            kps = (cell[:, None, :] + k) * s
            parts.append(Detections(boxes, scores[idx], kps))
        return Detections.concat(parts)
