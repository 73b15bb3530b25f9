"""Capture settings of one camera (decoder, detection rate). The component's ``CameraConfig``
takes these fields; ``open_camera`` turns them into a started ``CameraReader``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facefleet.capture.decoders import DecoderName
from facefleet.capture.reader import CameraReader
from facefleet.capture.stats import CameraStats


class CameraSource(BaseModel):
    """How a camera is read."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, description="rtsp(s):// or http(s):// URL, file path or file:// URL, V4L2 index "
                        "(\"0\") or /dev/videoN. For detection prefer the camera's low-resolution substream")
    decoder: DecoderName = Field("opencv", description="opencv (its bundled FFmpeg) or pyav (FFmpeg with decode threads "
                                 "and hwaccel; needs the optional PyAV package)")
    hwaccel: str | None = Field(None, description="pyav only: FFmpeg hardware decoder, e.g. drm on a Raspberry Pi 5 (HEVC "
                                "only: the Pi 5 has no H.264 decoder); falls back to software when it cannot decode")
    decode_threads: int = Field(0, ge=0, le=16, description="pyav only: FFmpeg decode threads (0: one per core)")
    detect_fps: float | None = Field(5.0, gt=0, le=120, description="live sources: frames per second processed at most, "
                                     "always the newest (older ones are dropped and counted); null: as fast as the pipeline "
                                     "goes. Files are processed frame by frame whatever this says")
    live: bool | None = Field(None, description="null: decide from the source (rtsp/camera/device: live; http(s): live "
                              "unless it tells its length; a path: a file)")

    @model_validator(mode="after")
    def _hwaccel_needs_pyav(self) -> CameraSource:
        if self.hwaccel and self.decoder != "pyav":
            raise ValueError("hwaccel needs decoder: pyav")
        return self


def open_camera(cam: CameraSource, stats: CameraStats | None = None, reconnect_attempts: int = 0) -> CameraReader:
    """Open the source and start its reader thread."""
    from facefleet.sources import CaptureSource, open_source

    src = open_source(cam.source, reconnect_attempts=reconnect_attempts, decoder=cam.decoder,
                      threads=cam.decode_threads, hwaccel=cam.hwaccel)
    if cam.live is not None and isinstance(src, CaptureSource):
        src.live = cam.live
    return CameraReader(src, detect_fps=cam.detect_fps, stats=stats).start()
