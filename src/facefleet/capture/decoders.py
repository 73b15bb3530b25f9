"""Decoders behind one small interface: OpenCV ``VideoCapture`` or PyAV (FFmpeg with decode
threads and optional hardware decoding).

Why a choice: a Raspberry Pi 5 has no H.264 hardware decoder (its only video block decodes
HEVC), so a 1080p H.264 stream costs CPU time that the pipeline needs. PyAV exposes FFmpeg's
frame threads and ``hwaccel`` (``drm`` on the Pi 5 for HEVC); OpenCV's bundled FFmpeg exposes
neither per stream. PyAV is an optional extra (``pip install av``), imported only when chosen.
"""

from __future__ import annotations

from typing import Literal, Protocol

import cv2
import numpy as np

from facefleet.errors import FacefleetError

DecoderName = Literal["opencv", "pyav"]


class Decoder(Protocol):
    frame_count: int | None    # frames in the source, when it says (a file, a finite HTTP video)
    duration_s: float | None   # length of the source, when it says

    def read(self) -> tuple[np.ndarray, float | None] | None:
        """Next BGR frame and its position (ms), or None at the end / on a lost stream."""
        ...

    def close(self) -> None: ...


class OpenCvDecoder:
    """cv2.VideoCapture: files, URLs (OpenCV's FFmpeg) and V4L2 camera indexes."""

    def __init__(self, target: str | int):
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            raise FacefleetError(f"cannot open {target} (unreachable, corrupt or unsupported)")
        n = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.frame_count = int(n) if n and n > 0 else None
        self.duration_s = self.frame_count / fps if self.frame_count and fps and fps > 0 else None

    def read(self) -> tuple[np.ndarray, float | None] | None:
        ok, img = self._cap.read()
        if not ok or img is None:
            return None
        pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        return img, (float(pos) if pos >= 0 else None)

    def close(self) -> None:
        self._cap.release()


class PyAvDecoder:
    """PyAV (FFmpeg): frame/slice threads, hardware decode (``hwaccel``) with software fallback,
    an open/read timeout so a dead camera does not block forever."""

    def __init__(self, target: str | int, threads: int = 0, hwaccel: str | None = None, timeout_s: float = 10.0):
        try:
            import av
        except ImportError:
            raise FacefleetError("decoder 'pyav' needs PyAV: pip install av (or the 'device' extra)") from None
        kwargs: dict = {"timeout": timeout_s}
        if hwaccel:
            from av.codec.hwaccel import HWAccel, hwdevices_available

            if hwaccel not in hwdevices_available():
                raise FacefleetError(f"hwaccel {hwaccel!r} is not available in this FFmpeg "
                                     f"(has: {', '.join(hwdevices_available()) or 'none'})")
            kwargs["hwaccel"] = HWAccel(device_type=hwaccel, allow_software_fallback=True)
        if isinstance(target, int) or str(target).startswith("/dev/video"):
            kwargs["format"] = "v4l2"
            target = f"/dev/video{target}" if isinstance(target, int) else target
        if str(target).lower().startswith(("rtsp://", "rtsps://")):
            kwargs["options"] = {"rtsp_transport": "tcp"}
        try:
            self._container = av.open(str(target), **kwargs)
        except (av.error.FFmpegError, OSError) as e:
            raise FacefleetError(f"cannot open {target} (unreachable, corrupt or unsupported: {e})") from None
        if not self._container.streams.video:
            self._container.close()
            raise FacefleetError(f"{target} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"        # frame + slice threads
        self._stream.thread_count = threads      # 0: FFmpeg picks (one per core)
        tb = self._stream.time_base
        self._tb_ms = float(tb) * 1000 if tb else None
        self._t0 = self._stream.start_time or 0  # positions from the first frame, as OpenCV reports them
        self.frame_count = self._stream.frames or None
        dur = self._container.duration  # microseconds (AV_TIME_BASE), None for a live stream
        self.duration_s = dur / 1e6 if dur and dur > 0 else None
        self._frames = self._container.decode(self._stream)
        self._av = av

    def read(self) -> tuple[np.ndarray, float | None] | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except (self._av.error.FFmpegError, OSError):
            return None  # corrupt data or a lost stream: the source decides (end or reconnect)
        pos = (frame.pts - self._t0) * self._tb_ms if frame.pts is not None and self._tb_ms else None
        return frame.to_ndarray(format="bgr24"), pos

    def close(self) -> None:
        self._container.close()


def open_decoder(target: str | int, decoder: DecoderName = "opencv", threads: int = 0, hwaccel: str | None = None) -> Decoder:
    if decoder == "opencv":
        if hwaccel:
            raise FacefleetError("hwaccel needs decoder 'pyav'")
        return OpenCvDecoder(target)
    if decoder == "pyav":
        return PyAvDecoder(target, threads=threads, hwaccel=hwaccel)
    raise FacefleetError(f"unknown decoder {decoder!r} (expected 'opencv' or 'pyav')")
