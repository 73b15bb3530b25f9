"""YOLOv8-face with 5 keypoints (derronqi/yolov8-face and its exports), with or without NMS
in the graph.

Raw heads (``nms_in_graph: false``; the way a compiled HEF returns them), per stride: box as
DFL, 4 sides (left, top, right, bottom) x ``reg_max`` bins, side-major (channel = reg_max*side
+ bin), distance = sum softmax(bins)*bin; one face logit (score = sigmoid); 5 x (x, y,
visibility) keypoints. Anchor point (col+0.5, row+0.5): x1 = (ax - dl)*s, y2 = (ay + db)*s;
keypoint x = (2*kx + col)*s, y = (2*ky + row)*s. The heads come either as one tensor per
stride (``heads``: 4*reg_max + 1 + 15 channels, the ONNX export) or split (``bbox``,
``scores``, ``kps``; a HEF's end nodes). Source: ASSETS.md "other detector families".

NMS in the graph (``nms_in_graph: true``, Ultralytics ``export(nms=True)``): one output
``detections [K, 6 + 15]`` rows x1, y1, x2, y2, score, class, then 5 x (x, y, visibility) in
input pixels, zero-padded (ultralytics/ultralytics ultralytics/engine/exporter.py NMSModel.forward,
with ``Detect.xyxy = True`` when exporting with nms).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from facefleet.vision.detections import Detections
from facefleet.vision.detectors.base import (
    DetectorConfig,
    OutputMismatch,
    above_threshold,
    grid,
    heads_by_shape,
    per_cell,
    require,
)


class Config(DetectorConfig):
    layout: Literal["yolov8_face"]
    nms_in_graph: bool = False
    strides: tuple[int, ...] = (8, 16, 32)
    reg_max: int = Field(16, gt=0, description="DFL bins per box side")
    heads: tuple[str, ...] | None = Field(None, description="one concatenated head per stride (box, score, kps)")
    bbox: tuple[str, ...] | None = Field(None, description="split heads: DFL box head per stride")
    scores: tuple[str, ...] | None = None
    kps: tuple[str, ...] | None = None
    heads_order: Literal["NCHW", "NHWC"] = "NCHW"
    scores_are_logits: bool = True
    detections: str | None = Field(None, description="nms_in_graph: the [K, 6+15] detections output")
    kps_start: int = Field(6, ge=5, description="nms_in_graph: first keypoint column")
    nms_iou: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _outputs(self) -> Config:
        n = len(self.strides)
        if self.nms_in_graph:
            if not self.detections:
                raise ValueError("detector.detections is required when nms_in_graph is true")
            return self
        split = (self.bbox, self.scores, self.kps)
        if self.heads is None and any(x is None for x in split):
            raise ValueError("detector needs 'heads' (one tensor per stride) or 'bbox', 'scores' and 'kps'")
        for f in self.output_fields():
            v = getattr(self, f)
            if v is not None and len(v) != n:
                raise ValueError(f"detector.{f} needs one entry per stride ({n})")
        return self

    @property
    def channels(self) -> int:
        return 4 * self.reg_max + 1 + 15

    def output_fields(self) -> tuple[str, ...]:
        if self.nms_in_graph:
            return ()
        return ("heads",) if self.heads is not None else ("bbox", "scores", "kps")

    def decoder(self) -> YoloFaceDecoder:
        return YoloFaceDecoder(self)

    def bind_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> Config:
        if self.nms_in_graph:
            raise OutputMismatch("Hailo's on-chip NMS drops keypoints: compile YOLOv8-face with raw heads")
        if self.heads is not None:
            found = heads_by_shape(outputs, in_h, in_w, self.strides, {"heads": self.channels}, "YOLOv8-face")
        else:
            found = heads_by_shape(outputs, in_h, in_w, self.strides,
                                   {"bbox": 4 * self.reg_max, "scores": 1, "kps": 15}, "YOLOv8-face")
        return self.model_copy(update={**found, "heads_order": "NHWC"})

    def check_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> None:
        if self.heads_order != "NHWC":
            raise OutputMismatch("a HEF returns raw heads channel-last: detector heads_order must be NHWC")
        super().check_hef(outputs, in_h, in_w)


class YoloFaceDecoder:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._cells: dict[tuple[int, int], np.ndarray] = {}
        self._bins = np.arange(cfg.reg_max, dtype=np.float32)

    def cells(self, gh: int, gw: int) -> np.ndarray:
        c = self._cells.get((gh, gw))
        if c is None:
            ys, xs = np.mgrid[:gh, :gw]
            c = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32)
            self._cells[(gh, gw)] = c
        return c

    def check(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int) -> None:
        cfg = self.cfg
        if cfg.nms_in_graph:
            if cfg.detections not in outputs:
                raise OutputMismatch(f"output {cfg.detections!r} named by its spec is missing (has {sorted(outputs)})")
            d = outputs[cfg.detections]
            if d.shape[-1] < cfg.kps_start + 15:
                raise OutputMismatch(f"output {cfg.detections!r} has shape {list(d.shape)}, spec implies rows of "
                                     f">= {cfg.kps_start + 15} values (box, score, class, 5 x (x, y, visibility))")
            return
        for i, s in enumerate(cfg.strides):
            gh, gw = grid(in_h, in_w, s)
            if cfg.heads is not None:
                require(outputs, cfg.heads[i], gh * gw * cfg.channels, f"stride {s}, {cfg.channels} channels")
            else:
                for names, per in ((cfg.bbox, 4 * cfg.reg_max), (cfg.scores, 1), (cfg.kps, 15)):
                    require(outputs, names[i], gh * gw * per, f"stride {s}, {per} channels")

    def _stride_rows(self, outputs: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores ``[cells]``, box bins ``[cells, 4*reg_max]``, kps ``[cells, 15]``) of stride i."""
        cfg, r4 = self.cfg, 4 * self.cfg.reg_max
        if cfg.heads is not None:
            rows = per_cell(outputs[cfg.heads[i]], cfg.channels, cfg.heads_order)
            return rows[:, r4], rows[:, :r4], rows[:, r4 + 1:r4 + 16]
        return (per_cell(outputs[cfg.scores[i]], 1, cfg.heads_order)[:, 0],
                per_cell(outputs[cfg.bbox[i]], r4, cfg.heads_order),
                per_cell(outputs[cfg.kps[i]], 15, cfg.heads_order))

    def decode(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int, score_threshold: float) -> Detections:
        cfg = self.cfg
        if cfg.nms_in_graph:
            return self._decode_nms(outputs[cfg.detections], score_threshold)
        parts = []
        for i, s in enumerate(cfg.strides):
            gh, gw = grid(in_h, in_w, s)
            raw, box, kp = self._stride_rows(outputs, i)
            idx, scores = above_threshold(raw, score_threshold, cfg.scores_are_logits)
            if idx.size == 0:
                continue
            bins = box[idx].astype(np.float32).reshape(-1, 4, cfg.reg_max)
            bins = np.exp(bins - bins.max(axis=2, keepdims=True))
            dist = (bins / bins.sum(axis=2, keepdims=True)) @ self._bins  # [n, 4]: left, top, right, bottom
            cell = self.cells(gh, gw)[idx]
            anchor = cell + 0.5
            boxes = np.concatenate([anchor - dist[:, :2], anchor + dist[:, 2:]], axis=1) * s
            k = kp[idx].astype(np.float32).reshape(-1, 5, 3)[:, :, :2]
            kps = (2 * k + cell[:, None, :]) * s
            parts.append(Detections(boxes.astype(np.float32), scores, kps.astype(np.float32)))
        return Detections.concat(parts)

    def _decode_nms(self, det: np.ndarray, score_threshold: float) -> Detections:
        rows = det.reshape(-1, det.shape[-1]).astype(np.float32)
        rows = rows[rows[:, 4] >= max(score_threshold, 1e-9)]
        k0 = self.cfg.kps_start
        kps = rows[:, k0:k0 + 15].reshape(-1, 5, 3)[:, :, :2]
        return Detections(rows[:, :4].copy(), rows[:, 4].copy(), np.ascontiguousarray(kps))
