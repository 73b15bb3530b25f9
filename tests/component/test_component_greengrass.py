"""Field failures of issue 10 on the device side, each on the wire-level nucleus stand-in with
the real GreengrassCoreIPCClientV2: access control on a default nucleus, start-up errors,
device permissions, the nucleus spooler's limits, live topic changes, lost streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from facefleet.errors import FacefleetError
from facefleet.events import ErrorEvent, to_json
from greengrass.nucleus import Nucleus

from .helpers import base_config, wait_until

OLD_ACL = {  # the accessControl the recipe had before: {iot:thingName} needs interpolateComponentConfiguration
    "aws.greengrass.ipc.mqttproxy": {
        "c:1": {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["facefleet/{iot:thingName}/events/+"]},
        "c:2": {"operations": ["aws.greengrass#SubscribeToIoTCore"], "resources": ["facefleet/{iot:thingName}/commands"]}},
    "aws.greengrass.ipc.pubsub": {
        "c:3": {"operations": ["aws.greengrass#PublishToTopic"], "resources": ["facefleet/{iot:thingName}/events/*"]}},
}


def test_recipe_access_control_works_on_a_default_nucleus(greengrass, assets):
    """Issue 10 item 1: a default nucleus (interpolateComponentConfiguration false) with the
    recipe's accessControl: subscribed, RUNNING, events reach IoT Core and the local copy."""
    comp, nucleus = greengrass(base_config(assets))
    try:
        assert not nucleus.interpolate and nucleus.states == ["RUNNING"]
        assert nucleus.subscribed_topics() == ["facefleet/thing-1/commands"]
        comp.error("test", "hello")
        assert wait_until(lambda: nucleus.events("error") and nucleus.local, 10)
        assert nucleus.errors_sent == []
    finally:
        comp.stop()


def test_unauthorized_subscribe_reports_errored_with_the_fix(greengrass, assets):
    """Issue 10 item 1: ``{iot:thingName}`` on a default nucleus -> SubscribeToIoTCore is
    UnauthorizedError. The component reports ERRORED and raises one line naming the call, the
    topic, the nucleus's answer and the fix; with interpolation on, the same policy works."""
    comp, nucleus = greengrass(base_config(assets, accessControl=OLD_ACL), start=False)
    with pytest.raises(FacefleetError) as err:
        comp.start()
    message = str(err.value)
    assert "\n" not in message
    assert "SubscribeToIoTCore facefleet/thing-1/commands" in message and "UnauthorizedError: Not Authorized" in message
    assert "interpolateComponentConfiguration" in message
    assert nucleus.states == ["ERRORED"]
    assert not any(w._thread.is_alive() for w in comp.cameras.values())
    comp2, nucleus2 = greengrass(base_config(assets, accessControl=OLD_ACL),
                                 nucleus_kwargs={"interpolate_component_configuration": True})
    try:
        assert nucleus2.states == ["RUNNING"]
    finally:
        comp2.stop()


def test_the_process_exits_with_one_line_and_errored(tmp_path, assets):
    """``python -m facefleet.component`` unmodified, as the recipe's Run step starts it, with the
    environment the nucleus gives it: no traceback, exit 1, ERRORED reported."""
    nucleus = Nucleus(base_config(assets, accessControl=OLD_ACL), thing="thing-1")
    try:
        env = {**os.environ, **nucleus.environ()}
        env.pop("FACEFLEET_DEBUG", None)
        r = subprocess.run([sys.executable, "-m", "facefleet.component", "--work", str(tmp_path), "--artifacts",
                            str(assets / "models")], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("facefleet: error: SubscribeToIoTCore") and "fix:" in last, r.stderr
        assert nucleus.states == ["ERRORED"]
    finally:
        nucleus.close()


def test_device_files_ggc_user_cannot_open_fail_the_start_with_the_fix(tmp_path, greengrass, assets):
    """Issue 10 item 10: the component runs as ggc_user. A camera device it cannot open (here a
    stand-in file, mode 000, and an access check playing a non-root user) fails the start with
    ERRORED and the exact command; the same for the Hailo device."""
    import grp

    from facefleet.component.devices import DeviceCheck

    video = tmp_path / "video0"
    video.write_bytes(b"")
    video.chmod(0)
    group = grp.getgrgid(video.stat().st_gid).gr_name
    check = DeviceCheck(access=lambda path, mode: False, user=lambda: "ggc_user", video_path=str(tmp_path / "video{}"),
                        hailo_path=str(video))
    cfg = base_config(assets, cameras=[{"id": "usb", "source": "0"}])
    comp, nucleus = greengrass(cfg, start=False, devices=check)
    with pytest.raises(FacefleetError) as err:
        comp.start()
    assert f"camera usb: ggc_user cannot open {video}" in str(err.value)
    expected = "51-hailo-udev.rules" if video.stat().st_gid == 0 else f"sudo usermod -aG {group} ggc_user"
    assert nucleus.states == ["ERRORED"]
    hailo = base_config(assets, models={"backend": "hailo"}, HAILO_DET_HEF="a.hef", HAILO_REC_HEF="b.hef")
    problems = check.problems(comp.cfg.model_validate(hailo))
    assert len(problems) == 1 and problems[0].startswith("Hailo-8: ggc_user cannot open")
    if video.stat().st_gid != 0:
        assert expected in str(err.value)
    else:
        assert "a udev rule" in str(err.value) and expected in problems[0]
    # a proposed configuration naming that device is rejected with the same fix
    ok, message = comp.validate(cfg)
    assert not ok and f"ggc_user cannot open {video}" in message and "fix:" in message
    # a user who may open the device: no problem
    assert DeviceCheck(access=lambda path, mode: True, video_path=str(tmp_path / "video{}")).problems(comp.cfg) == []


def test_a_full_nucleus_spooler_rejects_and_our_spool_keeps_the_events(greengrass, assets):
    """Issue 10 item 6: offline, the nucleus's in-memory spooler fills and REJECTS new QoS 1
    messages ("Message spool is full"); those stay in our spool and arrive, in order, once the
    nucleus is back online."""
    comp, nucleus = greengrass(base_config(assets, status_interval_s=3600), nucleus_kwargs={"spool_bytes": 4000})
    try:
        nucleus.set_online(False)
        for i in range(40):
            comp.publish(ErrorEvent(device="thing-1", source="test", message=f"event {i:03d}"))
        assert wait_until(lambda: any("Message spool is full" in e for e in [comp._sink.last_error or ""]), 20)
        assert comp.spool.depth > 0 and nucleus.spooled_bytes() <= 4000
        nucleus.set_online(True)
        assert wait_until(lambda: len([e for e in nucleus.events("error") if e["source"] == "test"]) == 40, 60)
        got = [e["message"] for e in nucleus.events("error") if e["source"] == "test"]
        assert got == [f"event {i:03d}" for i in range(40)]
        assert comp.spool.dropped == 0 and comp.spool.dead_letters == 0
    finally:
        comp.stop()


def test_an_event_over_the_transport_limit_is_set_aside_not_retried(greengrass, assets):
    """Issue 10 item 8: an event IoT Core can never take (over 128 KiB) must not sit at the head
    of the spool: it is moved to dead_letter, counted in status, and the events behind it flow."""
    comp, nucleus = greengrass(base_config(assets, status_interval_s=1))
    try:
        nucleus.set_online(False)  # let them queue behind the big one
        big = ErrorEvent(device="thing-1", source="test", message="x" * 200_000)
        comp.spool.put("facefleet/thing-1/events/error", "error", to_json(big))
        for i in range(50):
            comp.publish(ErrorEvent(device="thing-1", source="test", message=f"small {i}"))
        nucleus.set_online(True)
        assert wait_until(lambda: len([e for e in nucleus.events("error") if e["message"].startswith("small")]) == 50, 30)
        assert comp.spool.dead_letters == 1
        item, reason = comp.spool.dead_letter_items()[0]
        assert len(item.payload) > 131072 and "limit" in reason
        assert wait_until(lambda: any(s["dead_letter"] == 1 for s in nucleus.events("status")), 10)
    finally:
        comp.stop()


def test_a_nucleus_with_a_lower_limit_rejects_and_the_event_is_set_aside(greengrass, assets):
    """The nucleus's own maxMessageSizeInBytes may be lower than IoT Core's: its refusal
    ("exceeds the configured limit") is permanent, the event is set aside, the rest flows."""
    comp, nucleus = greengrass(base_config(assets, status_interval_s=3600), nucleus_kwargs={"max_message_bytes": 2000})
    try:
        comp.publish(ErrorEvent(device="thing-1", source="test", message="y" * 3000))
        comp.publish(ErrorEvent(device="thing-1", source="test", message="after"))
        assert wait_until(lambda: any(e["message"] == "after" for e in nucleus.events("error")), 20)
        assert comp.spool.dead_letters == 1 and "exceeds the configured limit" in comp.spool.dead_letter_items()[0][1]
    finally:
        comp.stop()


def test_a_live_change_of_the_command_topic_resubscribes(greengrass, assets):
    """Issue 10 item 11: topics.commands changes -> the new topic is subscribed, the old stream
    closed; commands on the new topic are answered."""
    cfg = base_config(assets)
    comp, nucleus = greengrass(cfg)
    try:
        assert nucleus.subscribed_topics() == ["facefleet/thing-1/commands"]
        nucleus.set_configuration({**cfg, "topics": {"commands": "facefleet/{thing}-b/commands"}})
        assert wait_until(lambda: nucleus.subscribed_topics() == ["facefleet/thing-1-b/commands"], 20), \
            nucleus.subscribed_topics()
        assert nucleus.push_iot_message("facefleet/thing-1/commands", json.dumps({"command": "list"})) == 0
        assert nucleus.push_iot_message("facefleet/thing-1-b/commands", json.dumps({"command": "list",
                                                                                       "request_id": "new"})) == 1
        assert wait_until(lambda: nucleus.events("command_result"), 20)
        assert nucleus.events("command_result")[0]["request_id"] == "new"
    finally:
        comp.stop()


def test_a_command_topic_the_policy_refuses_keeps_the_old_subscription(greengrass, assets):
    cfg = base_config(assets)
    comp, nucleus = greengrass(cfg)
    try:
        nucleus.set_configuration({**cfg, "topics": {"commands": "other/{thing}/commands"}})
        assert wait_until(lambda: any("not changed" in e["message"] and "Not Authorized" in e["message"]
                                      for e in nucleus.events("error")), 20)
        assert nucleus.subscribed_topics() == ["facefleet/thing-1/commands"]
        assert comp.cfg.topics.commands == "facefleet/{thing}/commands"
    finally:
        comp.stop()


def test_streams_the_nucleus_closes_are_resubscribed(greengrass, assets):
    """Issue 10 item 13: a closed IPC stream (on_stream_closed) is re-opened with backoff; the
    component keeps taking commands and configuration changes."""
    cfg = base_config(assets)
    comp, nucleus = greengrass(cfg)
    try:
        # iot: the command topic and the two IoT jobs topics (component/jobs.py)
        assert nucleus.close_streams("iot") == 3 and nucleus.close_streams("config") == 1
        assert wait_until(lambda: comp.subscriptions.reopened >= 4, 20)
        assert wait_until(lambda: len(nucleus.subscribed_topics(reserved=True)) == 3, 20)
        assert nucleus.subscribed_topics() == ["facefleet/thing-1/commands"]
        assert nucleus.push_iot_message("facefleet/thing-1/commands", json.dumps({"command": "list", "request_id": "a"})) == 1
        assert wait_until(lambda: nucleus.events("command_result"), 20)
        nucleus.set_configuration({**cfg, "status_interval_s": 7})
        assert wait_until(lambda: comp.cfg.status_interval_s == 7, 20)
        assert any("re-subscribing" in e["message"] for e in nucleus.events("error"))
        # a stream error (on_stream_error, then the stream ends) is re-subscribed the same way
        before = comp.subscriptions.reopened
        assert nucleus.fail_streams("iot") == 3
        assert wait_until(lambda: comp.subscriptions.reopened > before and nucleus.subscribed_topics(), 20)
        assert nucleus.push_iot_message("facefleet/thing-1/commands", json.dumps({"command": "list", "request_id": "b"})) == 1
        assert wait_until(lambda: len(nucleus.events("command_result")) == 2, 20)
    finally:
        comp.stop()
