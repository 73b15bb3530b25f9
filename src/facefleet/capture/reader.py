"""A reader per camera: decoding on its own thread, decoupled from processing.

Why: read in the processing loop, a live stream queues frames in the decoder (and the network
buffers) whenever processing is slower than the camera, and events fall further and further
behind real time. Here a live source keeps only its NEWEST frame: an unprocessed frame that a
newer one replaces is dropped and counted, so the latency of what is processed stays bounded by
one decode interval plus the processing time. Processing runs at most at ``detect_fps`` (Frigate
detects at 5 fps by default). A file (or a finite HTTP video) is still processed frame by frame:
the reader decodes at most ``depth`` frames ahead and waits, nothing is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from facefleet.capture.stats import CameraStats
from facefleet.sources import Frame, FrameSource

log = logging.getLogger(__name__)


class CameraReader:
    """Iterate it like a source; each frame asked for after the previous one marks the previous
    one processed (its capture-to-event latency is recorded in ``stats``)."""

    def __init__(self, source: FrameSource, detect_fps: float | None = None, stats: CameraStats | None = None,
                 live: bool | None = None, depth: int = 2, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] | None = None):
        self.source = source
        self.live = source.live if live is None else live
        self.period = 1.0 / detect_fps if detect_fps and self.live else 0.0  # files: every frame
        self.depth = 1 if self.live else max(depth, 1)
        self.stats = stats or CameraStats(clock=clock)
        self._clock = clock
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait  # interruptible by close()
        self._cond = threading.Condition()
        self._buf: deque[Frame] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._next_due: float | None = None
        self.max_pending = 0  # the most frames ever held at once (bounded memory: <= depth)
        self._thread = threading.Thread(target=self._decode, name=f"reader-{source.name}", daemon=True)

    # ---- decoding thread --------------------------------------------------------------------------
    def start(self) -> CameraReader:
        self._thread.start()
        return self

    def _decode(self) -> None:
        try:
            for frame in self.source:
                if self._stopped.is_set():
                    break
                if frame.captured is None:
                    frame.captured = self._clock()
                self.stats.on_decoded()
                with self._cond:
                    if self._stopped.is_set():  # closed while this frame was decoded
                        self.stats.on_dropped()
                        break
                    if self.live:
                        if self._buf:  # stale: a newer frame replaces it
                            self._buf.clear()
                            self.stats.on_dropped()
                    else:
                        while len(self._buf) >= self.depth and not self._stopped.is_set():
                            self._cond.wait()
                        if self._stopped.is_set():
                            self.stats.on_dropped()
                            break
                    self._buf.append(frame)
                    self.max_pending = max(self.max_pending, len(self._buf))
                    self._cond.notify_all()
        except BaseException as e:  # handed to the consumer: a lost stream is its error to report
            self._error = e
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    # ---- processing side ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buf)

    def get(self) -> Frame | None:
        """The next frame to process (the newest, for a live source), or None at the end."""
        if self.period and self._next_due is not None:
            remaining = self._next_due - self._clock()
            if remaining > 0:
                self._wait(remaining)
        with self._cond:
            while not self._buf and not self._ended and not self._stopped.is_set():
                self._cond.wait(0.5)
            if not self._buf:
                if self._error is not None and not self._stopped.is_set():
                    raise self._error
                return None
            frame = self._buf.popleft()
            self._cond.notify_all()
        if self.period:
            self._next_due = self._clock() + self.period
        return frame

    def __iter__(self) -> Iterator[Frame]:
        if not self._thread.is_alive() and not self._ended:
            self.start()
        while (frame := self.get()) is not None:
            yield frame
            self.stats.on_processed(frame.captured)

    def close(self, timeout: float = 5.0) -> None:
        """Stop decoding; frames still held are dropped (and counted)."""
        self._stopped.set()
        with self._cond:
            if self._buf:
                self.stats.on_dropped(len(self._buf))
                self._buf.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.source.close()

    # a reader is a drop-in FrameSource for code that iterates a source
    @property
    def name(self) -> str:
        return self.source.name

    @property
    def skipped(self) -> int:
        return self.source.skipped

    @property
    def reconnects(self) -> int:
        return self.source.reconnects
