"""Commands on the command topic, component-update deferral, status events, lifecycle states."""

from __future__ import annotations

import base64
import json
import threading

import cv2
import numpy as np
import pytest

from facefleet.component.service import Component

from .fake_ipc import FakeIpcClient
from .helpers import base_config, start_component, wait_until

CMD = "facefleet/thing-1/commands"


@pytest.fixture
def component(tmp_path, assets):
    comp, ipc = start_component(tmp_path, assets, base_config(assets, commands={"max_image_bytes": 400_000}))
    yield comp, ipc
    comp.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_enroll_list_remove(component, assets):
    comp, ipc = component
    assert ipc.iot_topics == [CMD]
    assert ipc.states == ["RUNNING"]
    img = (assets / "enroll" / "obama.jpg").read_bytes()
    ipc.push_iot_message(CMD, json.dumps({"command": "enroll", "name": "obama", "image_b64": _b64(img), "request_id": "r1"}))
    ipc.push_iot_message(CMD, json.dumps({"command": "list", "request_id": "r2"}))
    assert len(comp.index) == 1 and comp.index.names == ["obama"]
    ipc.push_iot_message(CMD, json.dumps({"command": "remove", "name": "obama", "request_id": "r3"}))
    assert len(comp.index) == 0
    comp.forwarder.drain(5)
    results = {e["request_id"]: e for e in ipc.events("command_result")}
    assert results["r1"]["ok"] and results["r1"]["message"] == "obama enrolled"
    assert results["r2"]["identities"] == ["obama"]
    assert results["r3"]["ok"] and not ipc.events("error")


def test_malformed_commands_become_error_events(component, assets):
    comp, ipc = component
    blank = cv2.imencode(".png", np.full((200, 200, 3), 127, np.uint8))[1].tobytes()
    big = (assets / "faces" / "people").glob("*/*.jpg")
    big_img = max(big, key=lambda p: p.stat().st_size).read_bytes()
    bad = [
        (b"\xff\xfe not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"command": "explode"}), "command"),
        (json.dumps({"command": "enroll", "image_b64": _b64(blank)}), "name"),
        (json.dumps({"command": "enroll", "name": "x", "image_b64": "!!!not base64!!!"}), "base64"),
        (json.dumps({"command": "enroll", "name": "x", "image_b64": _b64(b"garbage" * 10)}), "could not be decoded"),
        (json.dumps({"command": "enroll", "name": "x", "image_b64": _b64(blank)}), "no face"),
        (json.dumps({"command": "enroll", "name": "a/b", "image_b64": _b64(blank)}), "invalid identity name"),
        (json.dumps({"command": "enroll", "name": "x", "image_b64": _b64(big_img)}), "limit"),
        (json.dumps({"command": "remove", "name": "nobody"}), "no identity"),
        (json.dumps({"command": "list", "extra": 1}), "extra"),
    ]
    assert len(big_img) > 400_000
    for payload, _ in bad:
        ipc.push_iot_message(CMD, payload)
    comp.forwarder.drain(5)
    errors = [e["message"] for e in ipc.events("error")]
    assert len(errors) == len(bad), errors
    for (_, expected), message in zip(bad, errors, strict=True):
        assert expected in message, (expected, message)
    assert len(comp.gallery) == 0 and ipc.states == ["RUNNING"]


def test_component_update_is_deferred_during_a_swap_or_enrollment(component):
    comp, ipc = component
    ipc.push_component_update("dep-idle")
    release = threading.Event()
    entered = threading.Event()

    def long_job():
        with comp.busy():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=long_job)
    t.start()
    entered.wait(5)
    ipc.push_component_update("dep-busy")
    release.set()
    t.join()
    ipc.push_component_update("dep-later")
    assert [(d, ms) for d, _, ms in ipc.deferrals] == [("dep-idle", 0), ("dep-busy", 5000), ("dep-later", 0)]


def test_status_events(tmp_path, assets):
    from .helpers import video_camera

    comp, ipc = start_component(tmp_path, assets, base_config(assets, cameras=[video_camera(assets, fps_cap=20)]))
    try:
        assert wait_until(lambda: len(ipc.events("status")) >= 1, 20)
        st = ipc.events("status")[0]
        assert st["fps"]["stage"] > 0, st
        assert st["stage_ms"]["stage.detect"] > 0
        assert st["models"]["recognizer"] == comp.models.recognizer.fingerprint
        assert st["gallery_identities"] == 0 and st["dropped"] == 0 and st["spool_depth"] >= 0
    finally:
        comp.stop()


def test_errored_when_it_cannot_serve(tmp_path, assets):
    ipc = FakeIpcClient(base_config(assets, models={"backend": "onnx", "recognizer": "missing.onnx"}))
    comp = Component(ipc, tmp_path, artifacts=assets / "models", thing="thing-1", environ={})
    with pytest.raises(Exception, match="not found"):
        comp.start()
    assert ipc.states == ["ERRORED"]
