"""The standing fault suite: hostile inputs and faults (issue 12). Every case asserts one clear
line (or one error event), a non-zero exit where a command fails, no traceback, bounded memory,
cameras still running and nothing lost or half-written."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from facefleet import cli

MB = 1 << 20
MEMORY_SLACK = 400 * MB  # a case may raise the process's peak RSS by at most this much


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_cli(*args) -> tuple[int, str, str]:
    """``facefleet ARGS`` in-process (fast): (exit code, stdout, stderr), peak memory checked."""
    out, err = io.StringIO(), io.StringIO()
    before = maxrss()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    assert maxrss() - before < MEMORY_SLACK, f"peak RSS grew by {(maxrss() - before) >> 20} MB"
    return rc, out.getvalue(), err.getvalue()


def run_cli_child(*args, env: dict) -> tuple[int, str, int]:
    """``facefleet ARGS`` in a child: (exit code, stderr, the child's peak RSS in bytes)."""
    # VmHWM of this process image, not getrusage: Linux keeps ru_maxrss across fork+exec, so a child of a
    # large pytest process would report the parent's size (kernel/exit.c, fs/exec.c setmax_mm_hiwater_rss).
    code = ("import sys\nfrom facefleet.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))\n"
            "sys.stderr.write(f'\\nMAXRSS {hwm * 1024}\\n')\nsys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    rss = int(r.stderr.rsplit("MAXRSS ", 1)[1].split()[0]) if "MAXRSS " in r.stderr else -1
    return r.returncode, r.stderr.split("\nMAXRSS ")[0], rss


def assert_one_line_error(rc: int, err: str, needle: str, code: int | None = None) -> str:
    assert rc != 0, err
    if code is not None:
        assert rc == code, (rc, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("facefleet: error:")]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


def png_bomb(path: Path, side: int) -> Path:
    """A real PNG of side x side grey pixels (all zero): a few hundred KB encoded, side^2*3 bytes decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    parts = [comp.compress(row * 256) for _ in range(side // 256)]
    parts.append(comp.compress(row * (side % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory) -> Path:
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000)


@pytest.fixture(scope="session")
def face_jpg(assets) -> Path:
    return assets / "enroll" / "obama.jpg"


@pytest.fixture(scope="session")
def blank_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("blank") / "blank.png"
    cv2.imwrite(str(p), np.full((200, 200, 3), 127, np.uint8))
    return p


@pytest.fixture(autouse=True)
def _assets_env(assets, monkeypatch):
    monkeypatch.setenv("FACEFLEET_ASSETS", str(assets))
    monkeypatch.delenv("FACEFLEET_DEBUG", raising=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB file system (tmpfs; needs root/CAP_SYS_ADMIN), or None where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill a file system to the last byte; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.fixture(scope="session")
def mjpeg_camera(clip_frames):
    """A live IP camera double: an endless MJPEG stream over HTTP (multipart/x-mixed-replace, the
    format of common IP cameras and of FFmpeg's mpjpeg muxer) at 10 fps, read by OpenCV's FFmpeg
    backend like any http:// camera. Cameras on it never end, so "still running" is observable."""
    import http.server
    import threading
    import time

    jpegs = [cv2.imencode(".jpg", cv2.resize(f, (480, 270)))[1].tobytes() for f in clip_frames[:120]]
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=ffmpeg")
            self.end_headers()
            i = 0
            try:
                while not stop.is_set():
                    jpg = jpegs[i % len(jpegs)]
                    self.wfile.write(b"--ffmpeg\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                    i += 1
                    time.sleep(0.1)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    stop.set()
    server.shutdown()


@contextlib.contextmanager
def component_on_nucleus(config: dict, work: Path, artifacts: Path):
    """(component, nucleus): the wiring of tests/component's ``greengrass`` fixture (the nucleus
    stand-in's environment, the SDK's own GreengrassCoreIPCClientV2), usable at any scope."""
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    from facefleet.component.service import Component
    from greengrass.nucleus import Nucleus

    nucleus = Nucleus(config, thing="thing-1")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in nucleus.environ().items():
            mp.setenv(k, v)
        client = GreengrassCoreIPCClientV2()
    comp = Component(client, work, thing="thing-1", artifacts=artifacts, environ={})
    try:
        comp.start()
        yield comp, nucleus
    finally:
        comp.stop()
        client.close(executor_wait=False)
        nucleus.close()
