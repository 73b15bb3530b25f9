"""Fit a frame (or a region of it) into a detector input without distorting it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Maps detector-input coordinates back to frame coordinates: frame = input / scale + offset."""

    scale: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2k) interleaved x, y coordinates back to the frame."""
        out = xy / self.scale
        out[..., 0::2] += self.offset_x
        out[..., 1::2] += self.offset_y
        return out


def input_size(frame_w: int, frame_h: int, width: int | None, height: int | None,
               max_side: int, multiple: int) -> tuple[int, int]:
    """Detector input size: the model's fixed size, or (dynamic input) the frame scaled to
    ``max_side`` on its long side, each side rounded up to ``multiple`` (a 16:9 frame is not
    padded to a square)."""
    if width is not None and height is not None:
        return width, height
    s = max_side / max(frame_w, frame_h)
    return (max(multiple, math.ceil(frame_w * s / multiple) * multiple),
            max(multiple, math.ceil(frame_h * s / multiple) * multiple))


def letterbox(image: np.ndarray, out_w: int, out_h: int, out: np.ndarray | None = None,
              center: bool = False) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio, place top-left (or centred: the padding split equally
    on both sides, as YOLO-family models are trained), pad with zeros.

    ``out`` (uint8, out_h x out_w x 3) is reused when given, so a camera loop allocates once.
    """
    h, w = image.shape[:2]
    scale = min(out_w / w, out_h / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    px, py = ((out_w - nw) // 2, (out_h - nh) // 2) if center else (0, 0)
    if out is None or out.shape != (out_h, out_w, 3):
        out = np.zeros((out_h, out_w, 3), np.uint8)
    elif center:
        out.fill(0)
    else:
        out[nh:, :] = 0
        out[:nh, nw:] = 0
    dst = out[py:py + nh, px:px + nw]
    if (nw, nh) == (w, h):
        dst[:] = image
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        dst[:] = cv2.resize(image, (nw, nh), interpolation=interp)
    return out, Letterbox(scale=scale, offset_x=-px / scale, offset_y=-py / scale)
