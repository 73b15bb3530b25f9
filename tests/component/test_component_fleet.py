"""Issue 15 parts 3 (fleet erase, device side) and the device wiring of parts 2 and 4: the real
Component on the real models, the real IPC client against the wire-level nucleus stand-in.

The Jobs service side is played by the test with the payloads of the AWS IoT Jobs MQTT API
(https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html: StartNextPendingJobExecution
replies ``{"execution": {"jobId", "status", "jobDocument", ...}}`` on ``start-next/accepted``;
NextJobExecutionChanged on ``notify-next`` carries ``{"execution": {...}}``; UpdateJobExecution
takes ``{"status", "statusDetails"}`` on ``{jobId}/update``)."""

from __future__ import annotations

import json

from .helpers import base_config, video_camera, wait_until
from .test_component_gallery_archive import _archive, _artifacts

CMD = "facefleet/thing-1/commands"
JOBS = "$aws/things/thing-1/jobs/"


def _result(nucleus, rid: str, timeout: float = 30) -> dict:
    assert wait_until(lambda: any(e.get("request_id") == rid for e in nucleus.events("command_result")), timeout), nucleus.events()
    return next(e for e in nucleus.events("command_result") if e.get("request_id") == rid)


def test_erase_removes_is_idempotent_and_no_archive_brings_it_back(tmp_path, greengrass, assets, load_detector):
    artifacts = _artifacts(tmp_path, assets)
    both = _archive(tmp_path, assets, load_detector, ["obama", "miranda"])
    cfg = base_config(assets, gallery_archives=[both])
    comp, nucleus = greengrass(cfg, work=tmp_path / "work", artifacts=artifacts)
    try:
        assert comp.index.names == ["miranda", "obama"]
        before = comp.index.version
        nucleus.push_iot_message(CMD, json.dumps({"command": "erase", "name": "obama", "request_id": "e1"}))
        r = _result(nucleus, "e1")
        assert r["ok"] and r["message"] == "obama erased"
        assert comp.index.names == ["miranda"] and "obama" not in comp.gallery
        assert comp.index.version != before and comp.index.version == comp.gallery.version()
        nucleus.push_iot_message(CMD, json.dumps({"command": "erase", "name": "obama", "request_id": "e2"}))
        assert _result(nucleus, "e2")["ok"]  # erasing an absent name succeeds
        # a configuration change merges the archives again: the erased name stays out
        nucleus.set_configuration({**cfg, "gallery_archives": [both, _archive(tmp_path, assets, load_detector, ["obama"])]})
        assert wait_until(lambda: len(comp.cfg.gallery_archives) == 2, 60)
        assert comp.index.names == ["miranda"]
    finally:
        comp.stop()
    again, _ = greengrass(cfg, work=tmp_path / "work", artifacts=artifacts)  # a restart merges again
    try:
        assert again.index.names == ["miranda"]
    finally:
        again.stop()


def test_erase_job_reaches_a_device_when_it_comes_back_and_is_reported(tmp_path, greengrass, assets, load_detector):
    artifacts = _artifacts(tmp_path, assets)
    both = _archive(tmp_path, assets, load_detector, ["obama", "miranda"])
    comp, nucleus = greengrass(base_config(assets, gallery_archives=[both]), work=tmp_path / "work", artifacts=artifacts)
    try:
        assert sorted(nucleus.subscribed_topics(reserved=True)) == [JOBS + "notify-next", JOBS + "start-next/accepted", CMD]
        # (re)started: the device asks for its queued execution at once
        assert wait_until(lambda: ("start-next", {}) in nucleus.jobs_messages(), 10)
        execution = {"jobId": "erase-obama-1", "thingName": "thing-1", "status": "IN_PROGRESS", "versionNumber": 2,
                     "executionNumber": 1, "queuedAt": 1700000000, "startedAt": 1700000100, "lastUpdatedAt": 1700000100,
                     "jobDocument": {"command": "erase", "name": "obama"}}
        assert nucleus.push_iot_message(JOBS + "start-next/accepted", json.dumps({"execution": execution,
                                                                                 "timestamp": 1700000100})) == 1
        assert wait_until(lambda: any(t == "erase-obama-1/update" for t, _ in nucleus.jobs_messages()), 30)
        update = next(p for t, p in nucleus.jobs_messages() if t == "erase-obama-1/update")
        assert update == {"status": "SUCCEEDED", "statusDetails": {"message": "obama erased"}}
        assert comp.index.names == ["miranda"]
        # the same execution again (a notification raced the reply): run once
        nucleus.push_iot_message(JOBS + "start-next/accepted", json.dumps({"execution": execution}))
        # a notification of the next one: the device starts it; a bad document FAILS with the reason
        starts = sum(1 for t, _ in nucleus.jobs_messages() if t == "start-next")
        nucleus.push_iot_message(JOBS + "notify-next", json.dumps({"execution": {"jobId": "bad", "status": "QUEUED"}}))
        assert wait_until(lambda: sum(1 for t, _ in nucleus.jobs_messages() if t == "start-next") > starts, 10)
        bad = {"jobId": "bad", "status": "IN_PROGRESS", "jobDocument": {"command": "enroll", "name": "x", "image_b64": "AAAA"}}
        nucleus.push_iot_message(JOBS + "start-next/accepted", json.dumps({"execution": bad}))
        assert wait_until(lambda: any(t == "bad/update" for t, _ in nucleus.jobs_messages()), 30)
        fail = next(p for t, p in nucleus.jobs_messages() if t == "bad/update")
        assert fail["status"] == "FAILED" and "cannot come as an IoT job" in fail["statusDetails"]["message"]
        assert sum(1 for t, _ in nucleus.jobs_messages() if t == "erase-obama-1/update") == 1
        assert not nucleus.events("error")
    finally:
        comp.stop()


def test_unknowns_listed_and_promoted_and_status_carries_face_usability(tmp_path, greengrass, assets):
    cam = video_camera(assets, fps_cap=None)
    comp, nucleus = greengrass(base_config(assets, cameras=[cam], unknowns={"keep_crops": True}), work=tmp_path / "work")
    try:
        assert wait_until(lambda: any(e["decision"] == "unknown" and e["unknown_id"] for e in nucleus.events("match")), 120)
        unknown = next(e for e in nucleus.events("match") if e["decision"] == "unknown" and e["unknown_id"])
        assert unknown["gallery_version"] == comp.gallery.version()
        nucleus.push_iot_message(CMD, json.dumps({"command": "list_unknowns", "request_id": "l1"}))
        listed = _result(nucleus, "l1")["unknowns"]
        with_crops = [u for u in listed if u["crops"] > 0]
        assert with_crops and all(u["cameras"] == ["stage"] for u in listed)
        uid = with_crops[0]["unknown_id"]
        nucleus.push_iot_message(CMD, json.dumps({"command": "promote_unknown", "unknown_id": uid, "name": "alice",
                                                  "request_id": "p1"}))
        assert _result(nucleus, "p1")["ok"]
        assert "alice" in comp.index.names and "alice" in comp.gallery
        nucleus.push_iot_message(CMD, json.dumps({"command": "promote_unknown", "unknown_id": uid, "name": "bob",
                                                  "request_id": "p2"}))
        r = _result(nucleus, "p2")
        assert not r["ok"] and "no stranger" in r["message"]
        assert wait_until(lambda: any((e.get("face_usability") or {}).get("stage") for e in nucleus.events("status")), 30)
        usab = next(e["face_usability"]["stage"] for e in nucleus.events("status") if (e.get("face_usability") or {}).get("stage"))
        assert usab["frames"] >= usab["usable"] + usab["no_face"]
        assert all(e["temperature_c"] is None for e in nucleus.events("status"))  # onnx on the CPU reports none
    finally:
        comp.stop()


def test_an_unreadable_erase_list_never_lets_an_erased_name_back_nor_stops_the_component(tmp_path, greengrass, assets,
                                                                                          load_detector):
    artifacts = _artifacts(tmp_path, assets)
    both = _archive(tmp_path, assets, load_detector, ["obama", "miranda"])
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "erased_names.json").write_text('{"erased": ["obama"')  # torn write / disk fault
    comp, nucleus = greengrass(base_config(assets, gallery_archives=[both]), work=tmp_path / "work", artifacts=artifacts)
    try:
        assert nucleus.states == ["RUNNING"]
        assert len(comp.gallery) == 0  # not merged: it might carry an erased person
        assert wait_until(lambda: any("erased-names list" in e["message"] for e in nucleus.events("error")), 10)
        nucleus.push_iot_message(CMD, json.dumps({"command": "erase", "name": "obama", "request_id": "e1"}))
        r = _result(nucleus, "e1")
        assert not r["ok"] and "fixed or removed" in r["message"]
    finally:
        comp.stop()


def test_a_device_that_reconnected_without_a_restart_still_asks_for_its_jobs(greengrass, assets):
    """The notification is only queued for a persistent session: the device also asks every poll_s."""
    from facefleet.component.jobs import DeviceJobs
    from facefleet.component.subscriptions import Subscriptions

    comp, nucleus = greengrass(base_config(assets), start=False)
    subs = Subscriptions(comp.stream_lost, comp.stopping)  # the Greengrass plane makes these when it starts
    jobs = DeviceJobs(comp.ipc, "thing-1", lambda doc: "ok", comp.stopping, poll_s=0.1).start(subs, lambda f: f)
    try:
        assert wait_until(lambda: sum(1 for t, _ in nucleus.jobs_messages() if t == "start-next") >= 3, 10)
        nucleus.push_iot_message(JOBS + "start-next/accepted", json.dumps({"execution": {
            "jobId": "j1", "status": "IN_PROGRESS", "jobDocument": {"command": "erase", "name": "x"}}}))
        assert wait_until(lambda: ("j1/update", {"status": "SUCCEEDED", "statusDetails": {"message": "ok"}})
                          in nucleus.jobs_messages(), 10)
    finally:
        comp.stopping.set()
        subs.close_all()
    assert jobs.stop.is_set()
