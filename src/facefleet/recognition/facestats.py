"""Why a camera recognizes little: frames with faces but no usable one, split by reason.

A camera that "never recognizes anyone" is usually a geometry problem (faces too small), a
focus or motion problem (too blurred) or a light problem (embeddings below the pre_norm gate).
The pipeline classifies each frame that had at least one detection:

- ``usable``: some face passed every gate, or belongs to a track that is carried without
  re-embedding this frame (it was usable when embedded);
- else the reason of the face that got furthest: ``below_pre_norm_gate`` (embedded, norm under
  the gate) before ``too_blurred`` (variance of the Laplacian of the aligned crop under
  ``recognition.min_sharpness``; 0, the default, turns this gate off) before ``too_small``
  (under ``recognition.min_face_px``).

Frames with no detection at all are counted apart (``no_face``): an empty corridor is not a
problem. ``FaceStats.snapshot()`` is what a status event carries per camera: the component
fills ``StatusEvent.face_usability[camera_id] = pipeline.face_stats.snapshot(reset=True)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from facefleet.events import FaceUsability

USABLE, SMALL, BLURRED, GATED = "usable", "too_small", "too_blurred", "below_pre_norm_gate"
_RANK = {SMALL: 0, BLURRED: 1, GATED: 2}


def sharpness(crops: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each aligned crop (gray): a standard focus measure; low is blurred."""
    out = np.empty(len(crops), np.float32)
    for i, c in enumerate(crops):
        gray = cv2.cvtColor(c, cv2.COLOR_BGR2GRAY)
        out[i] = cv2.Laplacian(gray, cv2.CV_32F).var()
    return out


@dataclass
class FaceStats:
    """Per-pipeline counters (thread-safe: the status thread reads while the camera writes)."""

    frames: int = 0
    no_face: int = 0
    usable: int = 0
    too_small: int = 0
    too_blurred: int = 0
    below_pre_norm_gate: int = 0
    ignored_tracks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def frame(self, verdicts: list[str]) -> None:
        """One frame's per-face verdicts (empty: no detection)."""
        with self._lock:
            self.frames += 1
            if not verdicts:
                self.no_face += 1
            elif USABLE in verdicts:
                self.usable += 1
            else:
                worst = max(verdicts, key=_RANK.__getitem__)
                setattr(self, worst, getattr(self, worst) + 1)

    def ignored(self) -> None:
        with self._lock:
            self.ignored_tracks += 1

    def snapshot(self, reset: bool = False) -> FaceUsability:
        """The counters as the status event field; ``reset`` starts a new interval."""
        with self._lock:
            with_faces = self.frames - self.no_face
            unusable = self.too_small + self.too_blurred + self.below_pre_norm_gate
            snap = FaceUsability(frames=self.frames, no_face=self.no_face, usable=self.usable, too_small=self.too_small,
                                 too_blurred=self.too_blurred, below_pre_norm_gate=self.below_pre_norm_gate,
                                 ignored_tracks=self.ignored_tracks,
                                 unusable_share=unusable / with_faces if with_faces else 0.0)
            if reset:
                self.frames = self.no_face = self.usable = self.too_small = self.too_blurred = 0
                self.below_pre_norm_gate = self.ignored_tracks = 0
            return snap
