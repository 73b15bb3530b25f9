"""5-point similarity alignment to the ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np

# The standard ArcFace landmark template for a 112x112 crop (eyes, nose, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_transforms(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) for each face at once.

    ``src`` ``[n,5,2]`` -> affine matrices ``[n,2,3]`` mapping src points onto ``dst``. In 2-D this
    closed form equals Umeyama's estimate without reflection.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    sc = src - src.mean(axis=1, keepdims=True)
    dc = dst - dst.mean(axis=0)
    denom = np.maximum((sc ** 2).sum(axis=(1, 2)), 1e-12)
    a = (sc * dc).sum(axis=(1, 2)) / denom
    b = (sc[..., 0] * dc[..., 1] - sc[..., 1] * dc[..., 0]).sum(axis=1) / denom
    m = np.empty((len(src), 2, 3))
    m[:, 0, 0], m[:, 0, 1] = a, -b
    m[:, 1, 0], m[:, 1, 1] = b, a
    src_mean = src.mean(axis=1)
    dst_mean = dst.mean(axis=0)
    m[:, 0, 2] = dst_mean[0] - (a * src_mean[:, 0] - b * src_mean[:, 1])
    m[:, 1, 2] = dst_mean[1] - (b * src_mean[:, 0] + a * src_mean[:, 1])
    return m


def align_faces(image: np.ndarray, kps: np.ndarray, size: int = 112, out: np.ndarray | None = None) -> np.ndarray:
    """Warp every face of ``image`` into one uint8 batch ``[n,size,size,3]`` (same colour order)."""
    n = len(kps)
    if out is None or out.shape[0] < n:
        out = np.empty((n, size, size, 3), np.uint8)
    if n == 0:
        return out[:0]
    template = ARCFACE_TEMPLATE * (size / 112.0)
    for i, m in enumerate(similarity_transforms(kps, template)):
        cv2.warpAffine(image, m, (size, size), dst=out[i], borderValue=0)
    return out[:n]
