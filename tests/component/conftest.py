"""Fixtures for the component tests: a real mosquitto broker and the in-memory IPC client."""

from __future__ import annotations

import pytest

from .broker import Broker, Collector, mosquitto_binary


@pytest.fixture
def broker(tmp_path):
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: run ./scripts/test (it installs the Debian package)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def collector(broker):
    c = Collector(broker.port)
    assert c.subscribed.wait(10), "collector did not subscribe"
    yield c
    c.close()


@pytest.fixture(scope="session")
def long_video(tmp_path_factory, clip_frames):
    """The Hamilton clip three times over (made at run time): a camera that outlasts a test's
    configuration pushes even on a busy machine."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "hamilton_x3.avi"
    h, w = clip_frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    for _ in range(3):
        for f in clip_frames:
            out.write(f)
    out.release()
    return path
