"""A loopback HTTP file server with byte ranges (RFC 9110 §14), like any web server that hosts
videos: an MP4 whose index sits at its end can only be read with ranges. Python's
SimpleHTTPRequestHandler ignores Range, so it answers here."""

from __future__ import annotations

import http.server
import re
import threading
from contextlib import contextmanager, suppress
from pathlib import Path


def _handler(root: Path):
    class RangeHandler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet tests
            pass

        def do_GET(self):
            p = root / self.path.lstrip("/").split("?")[0]
            if not p.is_file():
                self.send_error(404)
                return
            data = p.read_bytes()
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
            if m:
                start = int(m.group(1) or 0)
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    return RangeHandler


@contextmanager
def serve(root: Path):
    """Serve ``root`` on a free loopback port; yields the base URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root))
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
