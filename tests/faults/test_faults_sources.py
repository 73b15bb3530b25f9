"""Sources (issue 12: 19): a finite video over HTTP ends; a live HTTP camera stays live."""

from __future__ import annotations

import pytest

from capture_http import serve
from facefleet.sources import open_source


@pytest.fixture(scope="module")
def http_files(assets):
    with serve(assets / "video") as url:  # byte ranges, as any web server serves a video file
        yield url


def test_http_url_of_a_finite_video_ends(http_files):
    src = open_source(f"{http_files}/hamilton_clip.mp4")
    try:
        assert not src.live
        n = sum(1 for _ in src)  # ends instead of reconnecting and replaying forever
        assert n > 0 and src.reconnects == 0
    finally:
        src.close()


def test_http_mjpeg_camera_stays_live(mjpeg_camera):
    src = open_source(mjpeg_camera)
    try:
        assert src.live
        it = iter(src)
        assert next(it).image.shape[:2] == (270, 480)
    finally:
        src.close()
