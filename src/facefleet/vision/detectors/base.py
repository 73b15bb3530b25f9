"""What every detector family plugin provides: a pydantic config (the spec's ``detector``
section, with a literal ``layout``) that builds a decoder.

A decoder turns one image's raw model outputs into face candidates in detector-input pixels
(before NMS). Letterboxing, mapping back to the frame, tiles, NMS and the minimum face size are
the Detector's, shared by every family.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from facefleet.vision.detections import Detections


class OutputMismatch(ValueError):
    """A model output the spec names is missing or has the wrong size (one line, no model name)."""


class Decoder(Protocol):
    def check(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int) -> None:
        """Raise OutputMismatch unless ``outputs`` (one image) are what the spec describes."""
        ...

    def decode(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int, score_threshold: float) -> Detections:
        """Candidates above ``score_threshold`` in detector-input pixels, before NMS."""
        ...


class DetectorConfig(BaseModel):
    """Fields every family shares. Subclasses add ``layout: Literal[...]`` and their outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    score_threshold: float = Field(0.5, ge=0, le=1, description="family-specific scale: YuNet 0.6, RetinaFace 0.6, ...")
    nms_iou: float = Field(0.4, gt=0, le=1)
    max_candidates: int = Field(1000, gt=0, description="candidates kept for NMS per image (the best-scoring)")

    def decoder(self) -> Decoder:
        raise NotImplementedError

    def output_fields(self) -> tuple[str, ...]:
        """Names of the fields that hold output names (for HEF binding and checks)."""
        return ()

    def bind_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> DetectorConfig:
        """This config with its output names taken from a HEF's outputs (channel-last shapes).

        Default: the names must already be the HEF's (a family whose heads cannot be told apart
        by shape keeps the names its template gives)."""
        missing = [n for f in self.output_fields() for n in (getattr(self, f) or ()) if n not in outputs]
        if missing:
            raise OutputMismatch(f"outputs {missing} are not in the HEF (it has {sorted(outputs)})")
        return self

    def check_hef(self, outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int) -> None:
        """Raise OutputMismatch unless this config describes a HEF with these outputs."""
        bound = self.bind_hef(outputs, in_h, in_w)
        for f in self.output_fields():
            named, found = getattr(self, f), getattr(bound, f)
            if named != found:
                raise OutputMismatch(f"detector.{f} {list(named or ())} do not fit the HEF outputs; "
                                     f"by shape they are {list(found or ())}")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logit(p: float) -> float:
    """The logit of a probability threshold (so scores are thresholded before any exp)."""
    if p <= 0:
        return -np.inf
    if p >= 1:
        return np.inf
    return float(np.log(p / (1 - p)))


def above_threshold(scores: np.ndarray, threshold: float, logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the candidates at or above ``threshold``. Logit scores are
    compared in logit space: one exp per candidate, not one per anchor."""
    if logits:
        idx = np.flatnonzero(scores >= logit(threshold))
        return idx, sigmoid(scores[idx].astype(np.float32))
    idx = np.flatnonzero(scores >= threshold)
    return idx, scores[idx].astype(np.float32)


def grid(in_h: int, in_w: int, stride: int) -> tuple[int, int]:
    """Cells of a stride's feature map (ceil, as the conv arithmetic gives)."""
    return -(-in_h // stride), -(-in_w // stride)


def require(outputs: dict[str, np.ndarray], name: str, size: int, what: str) -> np.ndarray:
    """The output ``name`` with exactly ``size`` values, else OutputMismatch naming why."""
    if name not in outputs:
        raise OutputMismatch(f"output {name!r} named by its spec is missing (has {sorted(outputs)})")
    arr = outputs[name]
    if arr.size != size:
        raise OutputMismatch(f"output {name!r} has shape {list(arr.shape)}, spec implies {size} values ({what})")
    return arr


def per_cell(head: np.ndarray, channels: int, order: str) -> np.ndarray:
    """A raw head of one image as ``[cells*k, channels]`` rows, cell-major (row-major cells).

    ``order`` NCHW: ``[C,H,W]`` (ONNX export); NHWC: ``[H,W,C]`` (HailoRT). A leading batch of 1
    is dropped.
    """
    if order == "NCHW":
        h = head.reshape(head.shape[-3:])
        return h.transpose(1, 2, 0).reshape(-1, channels)
    return head.reshape(-1, channels)


def heads_by_shape(outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int, strides: tuple[int, ...],
                   channels: dict[str, int], family: str) -> dict[str, tuple[str, ...]]:
    """Map channel-last raw heads ``(H, W, C)`` to named head kinds per stride, by shape.

    The grid gives the stride, the channel count gives the head kind. Layer names change with
    every compile; shapes do not. ``channels``: head kind -> channels (must be distinct).
    """
    by_channels = {c: k for k, c in channels.items()}
    found: dict[tuple[int, str], list[str]] = {}
    for name, shape in outputs.items():
        if len(shape) != 3:
            continue
        h, w, c = shape
        for si, s in enumerate(strides):
            if (h, w) == grid(in_h, in_w, s) and c in by_channels:
                found.setdefault((si, by_channels[c]), []).append(name)
    heads: dict[str, tuple[str, ...]] = {}
    for kind in channels:
        names = []
        for si, s in enumerate(strides):
            hits = found.get((si, kind), [])
            if len(hits) != 1:
                raise OutputMismatch(
                    f"HEF outputs do not fit {family}: {len(hits)} {kind} heads for stride {s} "
                    f"(outputs: {', '.join(f'{n} {list(sh)}' for n, sh in outputs.items())})")
            names.append(hits[0])
        heads[kind] = tuple(names)
    return heads
