"""A video file played as a live camera: frame i becomes available at start + i/fps (real
time), whatever the consumer does; optionally looped. For benchmarks and soak tests of the
live path without a camera."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from facefleet.sources import Frame, FrameSource


class PacedSource(FrameSource):
    """``open_file()`` gives a finite source; its frames are released at ``fps``. ``captured``
    is the time the camera produced the frame (its due time), so a decoder that falls behind
    shows up as latency, not hidden."""

    live = True

    def __init__(self, open_file: Callable[[], FrameSource], fps: float, seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep):
        super().__init__()
        if fps <= 0:
            raise ValueError("fps must be positive")
        self._open, self.fps, self.seconds = open_file, fps, seconds
        self._clock, self._sleep = clock, sleep
        self._closed = False
        self._current: FrameSource | None = None
        self.name = "paced"

    def __iter__(self) -> Iterator[Frame]:
        start = self._clock()
        n = 0
        while not self._closed:
            self._current = src = self._open()
            self.name = f"paced:{src.name}"
            got = False
            for frame in src:
                got = True
                due = start + n / self.fps
                if self.seconds is not None and due - start >= self.seconds:
                    return
                wait = due - self._clock()
                if wait > 0:
                    self._sleep(wait)
                if self._closed:
                    return
                yield Frame(n, frame.image, frame.source_ms, captured=due)
                n += 1
            src.close()
            if not got or self.seconds is None:
                return

    def close(self) -> None:
        self._closed = True
        if self._current is not None:
            self._current.close()
