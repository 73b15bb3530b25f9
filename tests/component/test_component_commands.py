"""Commands on the command topic, component-update deferral, status events, lifecycle states:
the real IPC client against the wire-level nucleus stand-in."""

from __future__ import annotations

import base64
import json
import threading

import cv2
import numpy as np
import pytest

from facefleet.errors import FacefleetError

from .helpers import base_config, jpeg_between, video_camera, wait_until

CMD = "facefleet/thing-1/commands"


@pytest.fixture
def component(greengrass, assets):
    comp, nucleus = greengrass(base_config(assets, commands={"max_image_bytes": 60_000}))
    yield comp, nucleus
    comp.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _results(nucleus, n: int) -> list[dict]:
    assert wait_until(lambda: len(nucleus.events("command_result")) + len(nucleus.events("error")) >= n, 20)
    return nucleus.events("command_result")


def test_enroll_list_remove(component, assets):
    comp, nucleus = component
    assert nucleus.subscribed_topics() == [CMD]
    assert nucleus.states == ["RUNNING"]
    img = jpeg_between(assets / "enroll" / "obama.jpg", 10_000, 60_000)
    nucleus.push_iot_message(CMD, json.dumps({"command": "enroll", "name": "obama", "image_b64": _b64(img), "request_id": "r1"}))
    _results(nucleus, 1)
    nucleus.push_iot_message(CMD, json.dumps({"command": "list", "request_id": "r2"}))
    _results(nucleus, 2)
    assert len(comp.index) == 1 and comp.index.names == ["obama"]
    nucleus.push_iot_message(CMD, json.dumps({"command": "remove", "name": "obama", "request_id": "r3"}))
    _results(nucleus, 3)
    assert len(comp.index) == 0
    results = {e["request_id"]: e for e in nucleus.events("command_result")}
    assert results["r1"]["ok"] and results["r1"]["message"] == "obama enrolled"
    assert results["r2"]["identities"] == ["obama"]
    assert results["r3"]["ok"] and not nucleus.events("error")


def test_malformed_commands_become_error_events(component, assets):
    comp, nucleus = component
    blank = cv2.imencode(".png", np.full((200, 200, 3), 127, np.uint8))[1].tobytes()
    big_img = jpeg_between(assets / "enroll" / "obama.jpg", 61_000, 90_000)
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
    assert len(big_img) > 60_000
    for i, (payload, _) in enumerate(bad):
        nucleus.push_iot_message(CMD, payload)  # one at a time: callbacks run on the SDK's thread pool
        assert wait_until(lambda i=i: len(nucleus.events("error")) > i, 20)
    errors = [e["message"] for e in nucleus.events("error")]
    assert len(errors) == len(bad), errors
    for (_, expected), message in zip(bad, errors, strict=True):
        assert expected in message, (expected, message)
    assert len(comp.gallery) == 0 and nucleus.states == ["RUNNING"]


def test_enroll_limit_fits_what_iot_core_can_carry(greengrass, assets):
    """Issue 10 item 8: the default image limit must fit a 128 KiB IoT Core payload in base64; a
    configuration an older version left at 2 MB is clamped to what the transport carries."""
    from facefleet.config import IOT_CORE_MAX_PAYLOAD, parse_component_config

    cfg = parse_component_config({})
    envelope = json.dumps({"command": "enroll", "name": "n" * 128, "image_b64": "", "request_id": "r" * 128})
    assert len(envelope) + 4 * -(-cfg.commands.max_image_bytes // 3) <= IOT_CORE_MAX_PAYLOAD
    old = parse_component_config({"commands": {"max_image_bytes": 2_000_000}})
    assert old.commands.effective_max_image_bytes == cfg.commands.max_image_bytes
    # the largest image the limit allows goes through the stand-in's IoT Core end to end
    comp, nucleus = greengrass(base_config(assets))
    try:
        img = jpeg_between(assets / "enroll" / "obama.jpg", 10_000, 60_000)
        pad = cfg.commands.max_image_bytes - len(img)
        assert pad >= 0
        padded = img + b"\0" * pad  # trailing bytes after the JPEG end marker: still decodes
        payload = json.dumps({"command": "enroll", "name": "obama", "image_b64": _b64(padded), "request_id": "big"})
        assert nucleus.push_iot_message(CMD, payload) == 1
        assert wait_until(lambda: nucleus.events("command_result"), 30)
        assert nucleus.events("command_result")[0]["ok"], nucleus.events()
    finally:
        comp.stop()


def test_component_update_is_deferred_during_a_swap_or_enrollment(component):
    comp, nucleus = component
    assert nucleus.push_component_update("dep-idle") is not None
    release = threading.Event()
    entered = threading.Event()

    def long_job():
        with comp.busy():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=long_job)
    t.start()
    entered.wait(5)
    assert nucleus.push_component_update("dep-busy") is not None
    release.set()
    t.join()
    assert nucleus.push_component_update("dep-later") is not None
    assert [(d, ms) for d, _, ms in nucleus.deferrals] == [("dep-idle", 0), ("dep-busy", 5000), ("dep-later", 0)]


def test_ipc_errors_reach_events_with_their_message(component):
    """Issue 10 item 13: the nucleus's answer is in the error's ``message`` field (str() of the
    SDK's error shapes is empty). A late answer to a pre-update is refused by the nucleus."""
    _comp, nucleus = component
    assert nucleus.push_component_update("dep-late", timeout=0) is None  # the nucleus stops waiting at once
    assert wait_until(lambda: nucleus.events("error"), 20)
    message = nucleus.events("error")[0]["message"]
    assert "Time limit to respond to PreComponentUpdateEvent exceeded" in message, message


def test_status_events(greengrass, assets):
    comp, nucleus = greengrass(base_config(assets, cameras=[video_camera(assets, fps_cap=20)]))
    try:
        assert wait_until(lambda: len(nucleus.events("status")) >= 1, 20)
        st = nucleus.events("status")[0]
        assert st["fps"]["stage"] > 0, st
        assert st["stage_ms"]["stage.detect"] > 0
        assert st["models"]["recognizer"] == comp.models.recognizer.fingerprint
        assert st["gallery_identities"] == 0 and st["dropped"] == 0 and st["spool_depth"] >= 0
        assert st["dead_letter"] == 0
    finally:
        comp.stop()


def test_errored_when_it_cannot_serve(greengrass, assets):
    comp, nucleus = greengrass(base_config(assets, models={"backend": "onnx", "recognizer": "missing.onnx"}), start=False)
    with pytest.raises(FacefleetError, match="not found"):
        comp.start()
    assert nucleus.states == ["ERRORED"]


def test_a_long_list_reply_is_cut_to_fit_iot_core(component):
    """Issue 10 item 8: a `list` reply over 128 KiB could never be delivered; it is cut to fit,
    says how many there are, and arrives."""
    comp, nucleus = component
    names = [f"person-{i:05d}-" + "x" * 100 for i in range(3000)]  # ~350 KB of names
    comp.gallery.names = lambda: names
    nucleus.push_iot_message(CMD, json.dumps({"command": "list", "request_id": "long"}))
    assert wait_until(lambda: nucleus.events("command_result"), 20), (comp.spool.depth, comp.spool.dead_letters)
    reply = nucleus.events("command_result")[0]
    assert reply["ok"] and "3000 identities" in reply["message"] and "listed" in reply["message"]
    assert 0 < len(reply["identities"]) < 3000 and reply["identities"] == names[:len(reply["identities"])]
    assert comp.spool.dead_letters == 0
