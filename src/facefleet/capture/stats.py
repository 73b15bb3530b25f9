"""Per-camera capture statistics for status events: decode fps, processed fps, dropped frames,
capture-to-event latency (p50/p99 over a bounded window of recent frames)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, Field


class CameraStatus(BaseModel):
    """What a status event carries per camera (rates since the previous report)."""

    decode_fps: float = Field(ge=0, description="frames decoded per second")
    processed_fps: float = Field(ge=0, description="frames run through the pipeline per second")
    decoded: int = Field(ge=0, description="frames decoded since start")
    processed: int = Field(ge=0, description="frames processed since start")
    dropped: int = Field(ge=0, description="frames decoded but never processed (a newer frame replaced them) since start")
    latency_ms_p50: float | None = Field(None, description="capture-to-event latency, median of recent frames")
    latency_ms_p99: float | None = Field(None, description="capture-to-event latency, 99th percentile of recent frames")


class CameraStats:
    """Counters updated by the reader thread (decoded, dropped) and the processing thread
    (processed, latency). Memory is bounded: latency keeps the last ``window`` samples."""

    def __init__(self, window: int = 1024, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self.decoded = 0
        self.processed = 0
        self.dropped = 0
        self._latency_s: deque[float] = deque(maxlen=window)
        self._mark = (clock(), 0, 0)  # (time, decoded, processed) at the previous report

    def on_decoded(self) -> None:
        with self._lock:
            self.decoded += 1

    def on_dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n

    def on_processed(self, captured: float | None) -> None:
        """A frame's events are out; ``captured`` is its decode time on the same clock."""
        now = self._clock()
        with self._lock:
            self.processed += 1
            if captured is not None:
                self._latency_s.append(max(now - captured, 0.0))

    def latency_ms(self, q: float) -> float | None:
        with self._lock:
            if not self._latency_s:
                return None
            return float(np.percentile(np.fromiter(self._latency_s, float), q) * 1000)

    def latencies_ms(self) -> list[float]:
        with self._lock:
            return [v * 1000 for v in self._latency_s]

    def report(self) -> CameraStatus:
        """Rates since the previous report; totals since start."""
        now = self._clock()
        with self._lock:
            t0, d0, p0 = self._mark
            dt = now - t0
            dec, proc, drop = self.decoded, self.processed, self.dropped
            self._mark = (now, dec, proc)
        return CameraStatus(decode_fps=round((dec - d0) / dt, 2) if dt > 0 else 0.0,
                            processed_fps=round((proc - p0) / dt, 2) if dt > 0 else 0.0,
                            decoded=dec, processed=proc, dropped=drop,
                            latency_ms_p50=_round(self.latency_ms(50)), latency_ms_p99=_round(self.latency_ms(99)))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
