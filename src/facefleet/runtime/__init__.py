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


class BackendPool:
    """One backend per kind for whoever owns the pool (a process, a component).

    HailoRT allows one VDevice per process, shared by every model: serving, validating a
    proposed configuration and hot-swapping must all load through the same backend.
    """

    def __init__(self, **options):
        self._options = options
        self._backends: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = create_backend(name, **self._options.get(name, {}))
        return self._backends[name]

    def health(self) -> dict[str, dict]:
        """``Backend.health()`` of each backend opened so far (never opens one)."""
        return {name: b.health() for name, b in list(self._backends.items())}

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()


__all__ = ["Backend", "BackendPool", "LoadedModel", "create_backend"]
