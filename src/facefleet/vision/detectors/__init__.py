"""Detector families as plugins: one module per family, found by module (as Frigate finds its
detector plugins), so a new family is a new file and touches no shared code.

Each module defines ``Config``: a pydantic model with a literal ``layout`` (the discriminator
of a spec's ``detector`` section) that builds the family's decoder. ``DetectorSpec`` is the
union of every plugin's Config, discriminated on ``layout``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field, TypeAdapter

from facefleet.vision.detectors.base import Decoder, DetectorConfig, OutputMismatch

_NOT_PLUGINS = {"base"}


def _plugins() -> tuple[type[DetectorConfig], ...]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_PLUGINS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        config = getattr(module, "Config", None)
        if isinstance(config, type) and issubclass(config, DetectorConfig):
            found.append(config)
    return tuple(found)


PLUGINS: tuple[type[DetectorConfig], ...] = _plugins()
DetectorSpec = Annotated[Union[PLUGINS], Field(discriminator="layout")]  # noqa: UP007 - a runtime tuple


_ADAPTER: TypeAdapter = TypeAdapter(DetectorSpec)


def validate_detector(data: object) -> DetectorConfig:
    """A spec's ``detector`` section as its family's Config (raises pydantic's ValidationError)."""
    return _ADAPTER.validate_python(data)


def layouts() -> list[str]:
    """Every ``detector.layout`` value a spec may use."""
    return [v for p in PLUGINS for v in p.model_fields["layout"].annotation.__args__]


__all__ = ["PLUGINS", "Decoder", "DetectorConfig", "DetectorSpec", "OutputMismatch", "layouts", "validate_detector"]
