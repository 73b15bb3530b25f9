"""Frame sources: video file, RTSP/HTTP URL, camera index, folder of images, single image.

Live streams reconnect with exponential backoff (tenacity) when they drop; files end. Live or
finite is decided from the source: rtsp/rtsps/rtmp/udp/tcp, a camera index or a /dev/video
device are live; an http(s) URL is live only when the stream tells no length (a finite HTTP
video is a file: it ends, it is not replayed as a stream that reconnects).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from facefleet.capture.decoders import Decoder, DecoderName, open_decoder
from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://")
HTTP_SCHEMES = ("http://", "https://")


@dataclass
class Frame:
    index: int
    image: np.ndarray           # BGR uint8
    source_ms: float | None     # position in the source, if known
    still: bool = False         # a photo: its own scene, every face decided
    name: str | None = None     # file name for stills
    captured: float | None = None  # time.monotonic() when decoded (capture-to-event latency)


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
    """A decoded video: a file (ends at EOF) or a live stream/camera (reconnects).

    ``live=None`` decides after opening: finite when the source tells its length (frame count
    or duration), live otherwise (an HTTP MJPEG camera, an HLS live playlist).
    """

    def __init__(self, target: str | int, live: bool | None, fps_cap: float | None = None,
                 reconnect_attempts: int = 0, backoff_max_s: float = 30.0,
                 decoder: DecoderName = "opencv", threads: int = 0, hwaccel: str | None = None):
        super().__init__()
        self.target = target
        self.name = str(target)
        self.fps_cap = fps_cap
        self.reconnect_attempts = reconnect_attempts  # 0 = forever (live only)
        self.backoff_max_s = backoff_max_s
        self.decoder_name, self.threads, self.hwaccel = decoder, threads, hwaccel
        self.live = live is not False  # until opened: an http(s) URL counts as a stream
        self._dec = self._open()
        if live is None:
            self.live = not (self._dec.frame_count or self._dec.duration_s)
            log.info("%s: %s", self.name, "live stream" if self.live else
                     f"finite video ({self._dec.frame_count or '?'} frames, {self._dec.duration_s or 0:.1f} s)")

    def _open(self) -> Decoder:
        try:
            return open_decoder(self.target, self.decoder_name, self.threads, self.hwaccel)
        except FacefleetError as e:
            kind = "stream" if self.live else "video"
            msg = str(e)
            raise FacefleetError(f"cannot open {kind} {msg[len('cannot open '):]}" if msg.startswith("cannot open ") else msg) from None

    def _reopen(self) -> None:
        self._dec.close()
        stop = stop_after_attempt(self.reconnect_attempts) if self.reconnect_attempts else None
        kwargs = {"stop": stop} if stop else {}
        retrying = Retrying(wait=wait_exponential(multiplier=0.5, max=self.backoff_max_s),
                            retry=retry_if_exception_type(FacefleetError), reraise=False,
                            before_sleep=lambda rs: log.warning("stream %s lost; reconnect attempt %d",
                                                                self.name, rs.attempt_number),
                            **kwargs)
        try:
            self._dec = retrying(self._open)
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
            got = self._dec.read()
            if got is None:
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
            now = time.monotonic()
            if min_dt:
                if now - last < min_dt:
                    continue
                last = now
            img, pos = got
            yield Frame(index, img, pos, captured=now)
            index += 1

    def close(self) -> None:
        self._dec.close()


def is_live_target(src: str) -> bool | None:
    """True for a camera or a streaming protocol, False for a path, None (decide after opening)
    for http(s)."""
    s = src.strip()
    if s.isdigit() or s.startswith("/dev/video") or s.lower().startswith(LIVE_SCHEMES):
        return True
    if s.lower().startswith(HTTP_SCHEMES):
        return None
    return False


def open_source(src: str, fps_cap: float | None = None, reconnect_attempts: int = 0,
                decoder: DecoderName = "opencv", threads: int = 0, hwaccel: str | None = None) -> FrameSource:
    """Pick the source kind from ``src``: camera index or device, URL, folder, image or video file."""
    opts = {"fps_cap": fps_cap, "decoder": decoder, "threads": threads, "hwaccel": hwaccel}
    s = src.strip()
    if s.lower().startswith("file://"):
        s = s[len("file://"):]
    if s.isdigit():
        return CaptureSource(int(s), live=True, reconnect_attempts=reconnect_attempts, **opts)
    live = is_live_target(s)
    if live is None or live:
        return CaptureSource(s, live=live, reconnect_attempts=reconnect_attempts, **opts)
    p = Path(s)
    if p.is_dir():
        return ImageFolderSource(p)
    if not p.exists():
        raise FacefleetError(f"source not found: {src}")
    if p.suffix.lower() in IMAGE_EXTS:
        return ImageFileSource(p)
    return CaptureSource(str(p), live=False, **opts)
