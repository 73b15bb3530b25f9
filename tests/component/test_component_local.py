"""Local mode: `facefleet run --config FILE.yaml` watches the file and applies a change with the
same validated hot swap (a bad edit is an error event; the run goes on)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import yaml

from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images


def test_run_watches_its_config_and_hot_swaps(tmp_path, assets, cli_env, load_detector, load_recognizer, long_video):
    gallery = Gallery.open(tmp_path / "g", create=True)
    enroll_images(gallery, load_detector(), "miranda", [assets / "enroll" / "lin-manuel-miranda.png"])
    models = assets / "models"
    cfg_file = tmp_path / "run.yaml"
    base = {"models": {"detector": str(models / "det_500m.onnx"), "recognizer": str(models / "w600k_mbf_fp32.onnx")}}
    cfg_file.write_text(yaml.safe_dump(base))
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "facefleet", "run", "--source", str(long_video),
                             "--gallery", str(tmp_path / "g"), "--config", str(cfg_file), "--events", str(events)],
                            env=cli_env, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # wait until it serves
            if "gallery 1 identities" in line:
                break
        time.sleep(0.05)  # a new mtime
        cfg_file.write_text(yaml.safe_dump({"models": {**base["models"], "recognizer": str(models / "mobilefacenet_128.onnx")}}))
        rest = proc.stderr.read()
        assert proc.wait(120) == 0, rest
    finally:
        proc.kill()
    out = [json.loads(line) for line in events.read_text().splitlines()]
    changed = [e for e in out if e["type"] == "model_changed"]
    new_fp = load_recognizer("mobilefacenet_128").fingerprint
    assert [(e["role"], e["new"]) for e in changed] == [("recognizer", new_fp)], rest
    after = out[out.index(changed[0]) + 1:]
    assert any(e["type"] == "match" and e["models"]["recognizer"] == new_fp and e["identity"] == "miranda" for e in after)


def test_bad_edits_are_reported_and_change_nothing(tmp_path, assets):
    """Local mode is the component with the local control plane: a bad edit of the watched file
    is an error event and the serving models and configuration stay as they were."""
    from facefleet.component.planes.local import LocalPlane
    from facefleet.component.service import Component

    Gallery.open(tmp_path / "g", create=True)
    models = assets / "models"
    base = {"device": "pi-1", "models": {"detector": str(models / "det_500m.onnx"), "recognizer": str(models / "w600k_mbf_fp32.onnx")}}
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(base))
    events = tmp_path / "events.jsonl"
    plane = LocalPlane(cfg_file, str(events), gallery=str(tmp_path / "g"), watch_interval_s=3600)
    comp = Component(plane, tmp_path, thing=plane.thing).start()
    edits = [("recognition: {match_threshold: 3}", "recognition.match_threshold"),
             ("models: [", "invalid YAML"),
             (yaml.safe_dump({**base, "models": {**base["models"], "recognizer": str(tmp_path / "nope.onnx")}}), "nope.onnx"),
             (yaml.safe_dump({**base, "models": {**base["models"], "recognizer": str(models / "det_500m.onnx")}}),
              "expected a recognizer")]
    try:
        det, rec = comp.models.detector, comp.models.recognizer
        for i, (text, _) in enumerate(edits):
            cfg_file.write_text(text + " " * i)  # a new size: the change is seen whatever the mtime resolution
            assert plane._watcher.check()
            assert comp.models.recognizer is rec and comp.models.detector is det  # still serving
        assert not plane._watcher.check()  # unchanged file: nothing to do
        assert comp.cfg.recognition.match_threshold is None  # the rejected threshold of 3 never applied
    finally:
        comp.stop()
        plane.close_events()
    errors = [e["message"] for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "error"]
    assert len(errors) == len(edits), errors
    for message, (_, expected) in zip(errors, edits, strict=True):
        assert expected in message, errors


def test_run_sends_events_to_mqtt_through_the_spool(tmp_path, assets, cli_env, broker, collector, load_detector):
    gallery = Gallery.open(tmp_path / "g", create=True)
    enroll_images(gallery, load_detector(), "obama", [assets / "enroll" / "obama.jpg"])
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"device": "pi-7", "mqtt": {"host": "127.0.0.1", "port": broker.port},
                                        "spool": {"path": "events.sqlite"}}))
    events = tmp_path / "events.jsonl"
    r = subprocess.run([sys.executable, "-m", "facefleet", "run", "--source", str(assets / "faces" / "couple.jpg"),
                        "--gallery", str(tmp_path / "g"), "--config", str(cfg_file), "--events", str(events)],
                       env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ids = {json.loads(line)["event_id"] for line in events.read_text().splitlines()}
    assert len(ids) == 2  # two faces in the photo
    assert collector.wait_for(ids, 10)  # confirmed before the run ended
    from facefleet.transport.spool import Spool

    assert Spool(tmp_path / "events.sqlite").depth == 0


def test_mqtt_settings_are_checked():
    import pytest

    from facefleet.config import parse_component_config
    from facefleet.errors import FacefleetError

    with pytest.raises(FacefleetError, match="only to a broker on loopback"):
        parse_component_config({"mqtt": {"host": "broker.example.com"}})
    with pytest.raises(FacefleetError, match="both cert and key"):
        parse_component_config({"mqtt": {"host": "a1b2-ats.iot.eu-west-1.amazonaws.com", "port": 8883, "cert": "c.pem"}})
    ok = parse_component_config({"mqtt": {"host": "a1b2-ats.iot.eu-west-1.amazonaws.com", "port": 8883, "cert": "c.pem", "key": "k.pem"}})
    assert ok.mqtt.port == 8883


def test_local_mode_runs_every_camera_with_commands_and_status(tmp_path, assets, cli_env, broker, load_detector, long_video):
    """`facefleet run --config` is the component: every camera of the file, commands from the
    local MQTT command topic, status events with per-camera capture figures."""
    from .helpers import make_gallery

    make_gallery(tmp_path, assets, load_detector())
    models = assets / "models"
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "device": "pi-9", "status_interval_s": 1, "gallery": "gallery", "spool": {"path": "events.sqlite"},
        "models": {"detector": str(models / "det_500m.onnx"), "recognizer": str(models / "w600k_mbf_fp32.onnx")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "cameras": [{"id": c, "source": str(long_video), "detect_fps": None} for c in ("a", "b")]}))
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "facefleet", "run", "--config", str(cfg_file), "--events", str(events)],
                            env=cli_env, stderr=subprocess.PIPE, text=True)
    from facefleet.transport.mqtt import MqttSink
    from facefleet.transport.spool import SpoolItem

    sender = MqttSink("127.0.0.1", broker.port)
    try:
        for line in proc.stderr:  # wait until it listens for commands
            if "commands on facefleet/pi-9/commands" in line:
                break
        cmd = json.dumps({"command": "list", "request_id": "r-list"}).encode()
        assert sender.send([SpoolItem(1, "facefleet/pi-9/commands", "command", cmd, time.time())]) == [True]
        rest = proc.stderr.read()
        assert proc.wait(300) == 0, rest
    finally:
        sender.close()
        proc.kill()
    out = [json.loads(line) for line in events.read_text().splitlines()]
    results = [e for e in out if e["type"] == "command_result"]
    assert [(r["request_id"], r["ok"], r["identities"]) for r in results] == [("r-list", True, ["miranda", "obama"])], rest
    assert {e["camera_id"] for e in out if e["type"] == "match"} == {"a", "b"}
    status = [e for e in out if e["type"] == "status"]
    assert status and set(status[-1]["cameras"]) == {"a", "b"}
    assert all(s["cameras"]["a"]["decoded"] >= s["cameras"]["a"]["processed"] for s in status)
    from facefleet.transport.spool import Spool

    assert Spool(tmp_path / "events.sqlite").depth == 0  # every event confirmed by the broker


def test_local_mode_start_failures_are_one_line(tmp_path, cli_env):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"models": {"recognizer": str(tmp_path / "nope.onnx")}}))
    for extra, needle in (([], "recognizer model file not found"), (["--source", str(tmp_path / "gone.mp4")], "source not found")):
        r = subprocess.run([sys.executable, "-m", "facefleet", "run", "--config", str(cfg_file), *extra], env=cli_env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
