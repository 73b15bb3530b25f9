"""Greedy non-maximum suppression, vectorized per kept box."""

from __future__ import annotations

import numpy as np


def overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every box in ``a`` ``[n,4]`` against every box in ``b`` ``[m,4]`` (x1y1x2y2): the IoU,
    and the intersection over the smaller box (1.0 when one box lies inside the other)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
    return iou, inter / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-9)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``[n,4]`` against every box in ``b`` ``[m,4]`` (x1y1x2y2)."""
    return overlaps(a, b)[0]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    if order.size <= 1:
        return order
    ious = iou_matrix(boxes[order], boxes[order])
    suppressed = np.zeros(order.size, bool)
    keep = []
    for i in range(order.size):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= ious[i] > iou
    return np.asarray(keep, dtype=np.int64)
