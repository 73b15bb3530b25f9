"""Quality of one face observation: how much a frame's embedding should count as evidence."""

from __future__ import annotations

import numpy as np


def quality_weights(pre_norm: np.ndarray, face_px: np.ndarray, det_score: np.ndarray,
                    pre_norm_ref: float, face_px_ref: float = 112.0) -> np.ndarray:
    """Weight in (0, 1] per face: the product of three saturating terms.

    pre_norm (ArcFace's un-normalized embedding length) tracks recognisability; small, blurred
    or turned faces have small norms. Size matters up to the 112 px the recognizer sees.
    """
    n = np.clip(np.asarray(pre_norm, np.float32) / pre_norm_ref, 0.0, 1.0)
    s = np.clip(np.asarray(face_px, np.float32) / face_px_ref, 0.05, 1.0)
    d = np.clip(np.asarray(det_score, np.float32), 0.0, 1.0)
    return np.maximum(n * s * d, 1e-6)
