"""RetinaFace (biubug6/Pytorch_Retinaface and the Hailo zoo's retinaface_mobilenet_v1).

Anchor-based: per stride, per cell (row-major), one prior per min size: centre
((col+0.5)*s, (row+0.5)*s), size (m, m). With variances (v0, v1):
cx = pcx + l0*v0*m, cy = pcy + l1*v0*m, w = m*exp(l2*v1), h = m*exp(l3*v1); landmark k:
(pcx + L[2k]*v0*m, pcy + L[2k+1]*v0*m). Score = softmax(conf)[1] (column 0 is background).

``outputs: concat``: one ``loc [N,4]``, ``conf [N,2]``, ``landmarks [N,10]`` for all strides
(the ONNX export, conf already softmaxed). ``outputs: per_stride``: three heads per stride
``[H,W,4A]``, ``[H,W,2A]``, ``[H,W,10A]`` (a compiled HEF: conf as logits).
Sources: ASSETS.md "other detector families"; hailo_model_zoo
core/postprocessing/face_detection_postprocessing.py (FaceDetectionPostProc: ceil feature maps,
SCALE_FACTORS (10, 5) = variances 0.1/0.2, softmax on the host) and cfg/base/retinaface.yaml.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from facefleet.vision.detections import Detections
from facefleet.vision.detectors.base import DetectorConfig, OutputMismatch, grid, heads_by_shape, per_cell, require


class Config(DetectorConfig):
    layout: Literal["retinaface"]
    outputs: Literal["concat", "per_stride"] = "concat"
    strides: tuple[int, ...] = (8, 16, 32)
    min_sizes: tuple[tuple[float, ...], ...] = Field(
        ((16, 32), (64, 128), (256, 512)), description="prior sizes per stride, in input pixels; one prior each per cell")
    variances: tuple[float, float] = (0.1, 0.2)
    loc: tuple[str, ...] = Field(description="box regression output(s): one name (concat) or one per stride")
    conf: tuple[str, ...]
    landmarks: tuple[str, ...]
    conf_is_softmax: bool = Field(True, description="False: 2-class logits, softmax on the host (HEF)")
    heads_order: Literal["NCHW", "NHWC"] = Field("NHWC", description="per_stride heads: channel order")
    nms_iou: float = Field(0.4, gt=0, le=1)

    @model_validator(mode="after")
    def _shapes(self) -> Config:
        if len(self.min_sizes) != len(self.strides):
            raise ValueError(f"detector.min_sizes needs one entry per stride ({len(self.strides)})")
        n = 1 if self.outputs == "concat" else len(self.strides)
        for f in ("loc", "conf", "landmarks"):
            if len(getattr(self, f)) != n:
                raise ValueError(f"detector.{f} needs {n} output name(s) for outputs {self.outputs!r}")
        return self

    @property
    def anchors(self) -> tuple[int, ...]:
        return tuple(len(m) for m in self.min_sizes)

    def output_fields(self) -> tuple[str, ...]:
        return ("loc", "conf", "landmarks")

    def decoder(self) -> RetinaFaceDecoder:
        return RetinaFaceDecoder(self)

    def bind_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> Config:
        if len(set(self.anchors)) != 1:
            raise OutputMismatch("HEF binding needs the same number of priors per cell on every stride")
        a = self.anchors[0]
        heads = heads_by_shape(outputs, in_h, in_w, self.strides, {"loc": 4 * a, "conf": 2 * a, "landmarks": 10 * a},
                               "RetinaFace")
        return self.model_copy(update={**heads, "outputs": "per_stride", "heads_order": "NHWC"})

    def check_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> None:
        if self.outputs != "per_stride" or self.heads_order != "NHWC":
            raise OutputMismatch("a HEF returns per-stride heads channel-last: detector outputs must be per_stride, "
                                 "heads_order NHWC")
        super().check_hef(outputs, in_h, in_w)


class RetinaFaceDecoder:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def priors(self, in_w: int, in_h: int) -> np.ndarray:
        """``[N, 3]`` (cx, cy, size) in input pixels, in output order (cached per input size)."""
        p = self._priors.get((in_w, in_h))
        if p is None:
            parts = []
            for s, sizes in zip(self.cfg.strides, self.cfg.min_sizes, strict=True):
                gh, gw = grid(in_h, in_w, s)
                ys, xs = np.mgrid[:gh, :gw]
                c = (np.stack([xs, ys], -1).reshape(-1, 1, 2).astype(np.float32) + 0.5) * s
                c = np.repeat(c, len(sizes), axis=1)
                m = np.broadcast_to(np.asarray(sizes, np.float32)[None, :, None], (gh * gw, len(sizes), 1))
                parts.append(np.concatenate([c, m], axis=2).reshape(-1, 3))
            p = np.concatenate(parts)
            self._priors[(in_w, in_h)] = p
        return p

    def _rows(self, outputs: dict[str, np.ndarray], names: tuple[str, ...], per: int) -> np.ndarray:
        if self.cfg.outputs == "concat":
            return outputs[names[0]].reshape(-1, per)
        return np.concatenate([per_cell(outputs[n], per, self.cfg.heads_order)
                               .reshape(-1, per) for n in names])

    def check(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int) -> None:
        cfg = self.cfg
        if cfg.outputs == "concat":
            n = len(self.priors(in_w, in_h))
            for name, per in ((cfg.loc[0], 4), (cfg.conf[0], 2), (cfg.landmarks[0], 10)):
                require(outputs, name, n * per, f"{n} priors x {per} at {in_w}x{in_h}")
            return
        for i, s in enumerate(cfg.strides):
            gh, gw = grid(in_h, in_w, s)
            a = cfg.anchors[i]
            for names, per in ((cfg.loc, 4), (cfg.conf, 2), (cfg.landmarks, 10)):
                require(outputs, names[i], gh * gw * a * per, f"stride {s}, {a} priors x {per}")

    def decode(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int, score_threshold: float) -> Detections:
        cfg = self.cfg
        conf = self._rows(outputs, cfg.conf, 2)
        if cfg.conf_is_softmax:
            scores = conf[:, 1]
        else:  # 2-class softmax = sigmoid of the logit difference
            scores = 1.0 / (1.0 + np.exp(conf[:, 0] - conf[:, 1]))
        idx = np.flatnonzero(scores >= score_threshold)
        if idx.size == 0:
            return Detections.empty()
        pri = self.priors(in_w, in_h)[idx]
        loc = self._rows(outputs, cfg.loc, 4)[idx].astype(np.float32)
        lm = self._rows(outputs, cfg.landmarks, 10)[idx].astype(np.float32).reshape(-1, 5, 2)
        v0, v1 = cfg.variances
        c, m = pri[:, :2], pri[:, 2:3]
        centre = c + loc[:, :2] * v0 * m
        half = m * np.exp(loc[:, 2:] * v1) / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = c[:, None, :] + lm * v0 * m[:, None, :]
        return Detections(boxes.astype(np.float32), scores[idx].astype(np.float32), kps.astype(np.float32))
