"""The backend contract shared by every runtime.

A loaded model takes a batch of uint8 NHWC images in OpenCV's BGR order and returns its raw
outputs by name. Colour order, normalization and layout are the backend's business, handled
once at this boundary from the ModelSpec, so the pipeline code is the same on every backend.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facefleet.modelspec import ModelSpec, ResolvedModel


class LoadedModel(Protocol):
    spec: ModelSpec
    infer_seconds: float  # cumulative time spent in the runtime's inference call
    calls: int            # inference calls made (one per batch)

    def input_size(self) -> tuple[int | None, int | None]:
        """(width, height) the model takes; None for a dynamic side."""
        ...

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` uint8 ``[n,h,w,3]`` BGR -> outputs by name (batch first)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def load(self, model: ResolvedModel) -> LoadedModel: ...

    def health(self) -> dict:
        """Device health for status events (hailo: temperature_c, throttling, error counters; onnx: {}).
        Never raises; values the device cannot give are None."""
        ...

    def close(self) -> None: ...
