"""Decoder choice per camera (OpenCV or PyAV/FFmpeg) and live-vs-finite from the source."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from capture_http import serve
from facefleet.capture.config import CameraSource, open_camera
from facefleet.errors import FacefleetError
from facefleet.sources import CaptureSource, is_live_target, open_source

pytest.importorskip("av")


@pytest.fixture(scope="module")
def clip(assets):
    return assets / "video" / "hamilton_clip.mp4"


def test_both_decoders_read_the_same_frames(clip):
    cv = list(open_source(str(clip), decoder="opencv"))
    av = list(open_source(str(clip), decoder="pyav", threads=2))
    assert len(cv) == len(av) == 275
    for i in (0, 10, 137, 274):
        assert av[i].image.shape == cv[i].image.shape == (360, 640, 3)
        assert av[i].source_ms == pytest.approx(cv[i].source_ms, abs=1)  # same timeline, from the first frame
        # same H.264 bitstream, two FFmpeg builds: the pictures agree up to colour conversion rounding
        assert np.abs(av[i].image.astype(int) - cv[i].image.astype(int)).mean() < 3


def test_pyav_refuses_a_missing_hardware_decoder_in_one_line(clip):
    with pytest.raises(FacefleetError, match="hwaccel 'no-such-device' is not available"):
        open_source(str(clip), decoder="pyav", hwaccel="no-such-device")
    with pytest.raises(FacefleetError, match="hwaccel needs decoder 'pyav'"):
        open_source(str(clip), decoder="opencv", hwaccel="drm")


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_corrupt_video_fails_clearly(tmp_path, decoder):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(FacefleetError, match=r"cannot (open|decode) video"):
        list(open_source(str(bad), decoder=decoder))


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_a_finite_http_video_is_a_file_not_a_stream(clip, decoder):
    with serve(clip.parent) as base:
        src = open_source(f"{base}/{clip.name}", decoder=decoder, reconnect_attempts=1)
        assert isinstance(src, CaptureSource) and not src.live
        frames = list(src)  # ends; a live stream would reconnect and replay
    assert len(frames) == 275 and src.reconnects == 0


def test_live_is_decided_from_the_source():
    assert is_live_target("rtsp://cam/stream") and is_live_target("rtsps://cam/s") and is_live_target("0")
    assert is_live_target("/dev/video0")
    assert is_live_target("http://cam/video.mjpg") is None  # decided by the stream: a length means a file
    assert is_live_target("/videos/a.mp4") is False


def test_camera_source_config():
    cam = CameraSource(source="rtsp://cam/sub", decoder="pyav", hwaccel="drm", decode_threads=2)
    assert cam.detect_fps == 5.0
    with pytest.raises(ValidationError, match="hwaccel needs decoder: pyav"):
        CameraSource(source="rtsp://cam/sub", hwaccel="drm")
    with pytest.raises(ValidationError):
        CameraSource(source="rtsp://cam/sub", decoder="gstreamer")


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_open_camera_reads_a_file_frame_by_frame(clip, decoder):
    reader = open_camera(CameraSource(source=f"file://{clip}", decoder=decoder))
    n = sum(1 for _ in reader)
    assert n == 275 and reader.stats.dropped == 0 and not reader.live


def test_unreachable_stream_fails_clearly_with_pyav():
    with pytest.raises(FacefleetError, match=r"cannot open stream rtsp://127\.0\.0\.1:9/none"):
        open_source("rtsp://127.0.0.1:9/none", decoder="pyav", reconnect_attempts=1)
