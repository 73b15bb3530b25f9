"""Backends: the only code that knows where a model runs (onnxruntime, HailoRT)."""

from __future__ import annotations

from facefleet.errors import FacefleetError
from facefleet.runtime.base import Backend, LoadedModel


def create_backend(name: str, **options) -> Backend:
    """A backend by name; the heavy import happens here, lazily."""
    if name == "onnx":
        from facefleet.runtime.onnx import OnnxBackend

        return OnnxBackend(**options)
    if name == "hailo":
        from facefleet.runtime.hailo import HailoBackend  # type: ignore[import-not-found]

        return HailoBackend(**options)
    raise FacefleetError(f"unknown backend {name!r} (expected 'onnx' or 'hailo')")


__all__ = ["Backend", "LoadedModel", "create_backend"]
