"""Frame sources: video file, RTSP/HTTP URL, camera index, folder of images, single image.

Live streams reconnect with exponential backoff (tenacity) when they drop; files end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


@dataclass
class Frame:
    index: int
    image: np.ndarray           # BGR uint8
    source_ms: float | None     # position in the source, if known
    still: bool = False         # a photo: its own scene, every face decided
    name: str | None = None     # file name for stills


def read_image(path: str | Path) -> np.ndarray:
    """Read a BGR image or fail with one clear line."""
    from facefleet.images import read_image_file

    return read_image_file(path)  # dimensions checked from the header before decoding


class _StreamLost(Exception):
    pass


class FrameSource:
    """Iterable of frames; ``stats`` tells reconnects and skipped inputs."""

    name: str = ""
    live: bool = False

    def __init__(self) -> None:
        self.reconnects = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageFolderSource(FrameSource):
    """Every image in a folder (sorted), each a still."""

    def __init__(self, folder: Path):
        super().__init__()
        self.name = str(folder)
        self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise FacefleetError(f"no images in folder {folder}")

    def __iter__(self) -> Iterator[Frame]:
        for i, p in enumerate(self.files):
            try:
                img = read_image(p)
            except FacefleetError as e:
                log.error("%s; skipped", e)
                self.skipped += 1
                continue
            yield Frame(i, img, None, still=True, name=str(p.relative_to(self.name)))


class ImageFileSource(FrameSource):
    def __init__(self, path: Path):
        super().__init__()
        self.name = str(path)
        self.image = read_image(path)

    def __iter__(self) -> Iterator[Frame]:
        yield Frame(0, self.image, None, still=True, name=Path(self.name).name)


class CaptureSource(FrameSource):
    """OpenCV VideoCapture: a file (ends at EOF) or a live stream/camera (reconnects)."""

    def __init__(self, target: str | int, live: bool, fps_cap: float | None = None,
                 reconnect_attempts: int = 0, backoff_max_s: float = 30.0):
        super().__init__()
        self.target = target
        self.name = str(target)
        self.live = live
        self.fps_cap = fps_cap
        self.reconnect_attempts = reconnect_attempts  # 0 = forever (live only)
        self.backoff_max_s = backoff_max_s
        self._cap = self._open()

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            kind = "stream" if self.live else "video"
            raise FacefleetError(f"cannot open {kind} {self.target} (unreachable, corrupt or unsupported)")
        return cap

    def _reopen(self) -> None:
        self._cap.release()
        stop = stop_after_attempt(self.reconnect_attempts) if self.reconnect_attempts else None
        kwargs = {"stop": stop} if stop else {}
        retrying = Retrying(wait=wait_exponential(multiplier=0.5, max=self.backoff_max_s),
                            retry=retry_if_exception_type(FacefleetError), reraise=False,
                            before_sleep=lambda rs: log.warning("stream %s lost; reconnect attempt %d",
                                                                self.name, rs.attempt_number),
                            **kwargs)
        try:
            self._cap = retrying(self._open)
        except RetryError:
            raise _StreamLost(self.name) from None
        self.reconnects += 1
        log.info("stream %s reconnected", self.name)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        min_dt = 1.0 / self.fps_cap if self.fps_cap else 0.0
        last = 0.0
        first = True
        while True:
            ok, img = self._cap.read()
            if not ok or img is None:
                if first and not self.live:
                    raise FacefleetError(f"cannot decode video {self.name} (no frames)")
                if not self.live:
                    return
                try:
                    self._reopen()
                except _StreamLost:
                    raise FacefleetError(f"stream {self.name} lost and did not come back") from None
                continue
            first = False
            if min_dt:
                now = time.monotonic()
                if now - last < min_dt:
                    continue
                last = now
            pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            yield Frame(index, img, float(pos) if pos >= 0 else None)
            index += 1

    def close(self) -> None:
        self._cap.release()


def open_source(src: str, fps_cap: float | None = None, reconnect_attempts: int = 0) -> FrameSource:
    """Pick the source kind from ``src``: camera index, URL, folder, image or video file."""
    if src.strip().isdigit():
        return CaptureSource(int(src), live=True, fps_cap=fps_cap, reconnect_attempts=reconnect_attempts)
    if src.lower().startswith(STREAM_SCHEMES):
        source = CaptureSource(src, live=True, fps_cap=fps_cap, reconnect_attempts=reconnect_attempts)
        if src.lower().startswith(("http://", "https://")) and source._cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0:
            source.live = False  # a video FILE served over HTTP (it has a frame count): it ends, it is not replayed
        return source
    p = Path(src)
    if p.is_dir():
        return ImageFolderSource(p)
    if not p.exists():
        raise FacefleetError(f"source not found: {src}")
    if p.suffix.lower() in IMAGE_EXTS:
        return ImageFileSource(p)
    return CaptureSource(str(p), live=False, fps_cap=fps_cap)
