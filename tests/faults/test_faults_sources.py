"""Sources (issue 12: 19): a finite video over HTTP ends; a live HTTP camera stays live."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

from facefleet.sources import open_source


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges (RFC 9110 section 14), as any web server serves a video file:
    FFmpeg seeks to an mp4's index with a Range request."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not rng.startswith("bytes=") or not os.path.isfile(path):
            return super().do_GET()
        data = Path(path).read_bytes()
        first, _, last = rng[6:].split(",")[0].partition("-")
        start = int(first) if first else max(0, len(data) - int(last))
        end = int(last) if first and last else len(data) - 1
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        body = data[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)


@pytest.fixture(scope="module")
def http_files(assets):
    handler = functools.partial(_RangeHandler, directory=str(assets / "video"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


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
