"""What a status event says about the cameras and the device beyond fps: why faces are unusable,
and how hot the accelerator runs."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def temperature_c(backends) -> float | None:
    """The hottest temperature a backend reports (hailo: the chip's sensors), None when none does."""
    temps = []
    for name, h in backends.health().items():
        t = (h or {}).get("temperature_c")
        if isinstance(t, int | float) and -50 <= t <= 150:
            temps.append(float(t))
        elif t is not None:
            log.debug("backend %s reports temperature %r: not used", name, t)
    return max(temps) if temps else None
