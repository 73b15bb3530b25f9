"""Fixtures for the component tests: a real mosquitto broker, and components on the real models
talking to the wire-level nucleus stand-in through the real IPC client."""

from __future__ import annotations

import pytest

from facefleet.component.service import Component
from greengrass.nucleus import Nucleus


@pytest.fixture
def greengrass(tmp_path, assets, monkeypatch):
    """``greengrass(config, start=True, **component_kwargs) -> (component, nucleus)``: a nucleus
    stand-in holding ``config``, the process environment it gives a component
    (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT, SVCUID), the SDK's own
    ``GreengrassCoreIPCClientV2()`` connected from that environment, and a Component on it."""
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    made = []

    def make(config: dict, start: bool = True, nucleus_kwargs: dict | None = None, **kw):
        nucleus = Nucleus(config, thing="thing-1", **(nucleus_kwargs or {}))
        for k, v in nucleus.environ().items():
            monkeypatch.setenv(k, v)
        client = GreengrassCoreIPCClientV2()
        made.append((nucleus, client))
        kw.setdefault("artifacts", assets / "models")
        kw.setdefault("environ", {})
        comp = Component(client, kw.pop("work", tmp_path), thing="thing-1", **kw)
        if start:
            comp.start()
        return comp, nucleus

    yield make
    for nucleus, client in made:
        client.close(executor_wait=False)
        nucleus.close()


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
