"""facefleet events: validate, de-duplicate, store; over a real mosquitto broker and over SQS (moto)."""

import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from facefleet.cloud.consumer import Consumer, JsonlStore, MqttSubscriber, SqliteStore, consume_sqs, setup_rule
from facefleet.events import Candidate, ErrorEvent, MatchEvent, Models, Quality, to_json


def match_event(i: int, identity: str | None = "obama") -> MatchEvent:
    return MatchEvent(device="pi-7", camera_id="door", track_id=i, decision="identified" if identity else "unknown",
                      identity=identity, similarity=0.61, threshold=0.32, frame_index=i, first_frame=i, last_frame=i,
                      bbox=(1, 2, 3, 4), best_candidate=None if identity else Candidate(identity="obama", similarity=0.2),
                      quality=Quality(pre_norm=21.0, face_px=90, det_score=0.8, evidence_frames=3, evidence_weight=2.1),
                      models=Models(detector="a" * 16, recognizer="b" * 16))


def test_validates_dedups_and_follows(tmp_path):
    out = io.StringIO()
    c = Consumer(JsonlStore(tmp_path / "ev.jsonl"), follow=out)
    e1, e2 = match_event(1), match_event(2, None)
    assert c.handle(to_json(e1).encode(), "facefleet/pi-7/events/match")
    assert not c.handle(to_json(e1), "t")  # a redelivery
    assert c.handle(to_json(e2), "t")
    assert c.handle(to_json(ErrorEvent(source="camera", message="door cam lost")), "t")
    bad = json.loads(to_json(match_event(3)))
    bad["similarity"] = "high"
    assert not c.handle(json.dumps(bad), "t")
    assert not c.handle(b"\xff not json", "t")
    assert not c.handle(json.dumps({"type": "match"}), "t")
    assert (c.stats.received, c.stats.stored, c.stats.duplicates, c.stats.invalid) == (7, 3, 1, 3)
    lines = out.getvalue().splitlines()
    assert "pi-7/door track 1: obama (0.61) face 90px" in lines[0] and "track 2: unknown" in lines[1]
    assert "ERROR camera: door cam lost" in lines[2]
    c.store.close()
    # a restarted consumer knows what it already wrote
    again = Consumer(JsonlStore(tmp_path / "ev.jsonl"))
    assert not again.handle(to_json(e1)) and again.stats.duplicates == 1
    again.store.close()
    assert len((tmp_path / "ev.jsonl").read_text().splitlines()) == 3


def test_sqlite_store(tmp_path):
    store = SqliteStore(tmp_path / "ev.db")
    c = Consumer(store)
    for i in range(5):
        c.handle(to_json(match_event(i)))
    ev = to_json(match_event(9))
    c.handle(ev)
    c.handle(ev)
    assert store.count() == 6 and c.stats.duplicates == 1
    store.close()
    assert SqliteStore(tmp_path / "ev.db").count() == 6


def test_sqs_rule_and_consumer(mocked_aws, tmp_path):
    iot, sqs = mocked_aws.client("iot"), mocked_aws.client("sqs")
    rule, url = setup_rule(iot, sqs, rule_name="ff_events", queue_name="ff-events",
                           role_arn="arn:aws:iam::123456789012:role/iot-to-sqs")
    got = iot.get_topic_rule(ruleName=rule)["rule"]
    assert got["sql"] == "SELECT * FROM 'facefleet/+/events/#'"
    assert got["actions"][0]["sqs"]["queueUrl"] == url
    # what the rule delivers: the event JSON as the message body (useBase64 false); one duplicate
    events = [match_event(i) for i in range(12)]
    for e in [*events, events[3]]:
        sqs.send_message(QueueUrl=url, MessageBody=to_json(e))
    sqs.send_message(QueueUrl=url, MessageBody="garbage")
    c = Consumer(SqliteStore(tmp_path / "ev.db"))
    polls = []
    consume_sqs(sqs, url, c, stop=lambda: polls.append(1) or len(polls) > 4, wait_s=0)
    assert c.stats.stored == 12 and c.stats.duplicates == 1 and c.stats.invalid == 1
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"] == "0"  # every handled message was deleted


@pytest.fixture
def broker(tmp_path):
    from component.broker import Broker, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: ./scripts/test installs it")
    # mosquitto started as root drops to its own user, which must reach and write its persistence
    # file (pytest's tmp folders are 0700): a world-writable folder directly under /tmp
    folder = Path(tempfile.mkdtemp(prefix="facefleet-broker-"))
    folder.chmod(0o777)
    b = Broker(folder)
    b.start()
    yield b
    b.stop()
    shutil.rmtree(folder, ignore_errors=True)


class Publisher:
    def __init__(self, port: int):
        from awscrt import mqtt5

        self.mqtt5 = mqtt5
        self.up = threading.Event()
        self.client = mqtt5.Client(mqtt5.ClientOptions(
            host_name="127.0.0.1", port=port, min_reconnect_delay_ms=100, max_reconnect_delay_ms=300,
            on_lifecycle_event_connection_success_fn=lambda _d: self.up.set(),
            on_lifecycle_event_disconnection_fn=lambda _d: self.up.clear()))
        self.client.start()

    def publish(self, payload: str, topic: str = "facefleet/pi-7/events/match") -> None:
        while True:
            assert self.up.wait(20), "publisher never connected"
            try:
                self.client.publish(self.mqtt5.PublishPacket(topic=topic, payload=payload.encode(),
                                                             qos=self.mqtt5.QoS.AT_LEAST_ONCE)).result(5)
                return
            except Exception:
                time.sleep(0.1)  # the broker is restarting: publish again (a duplicate is fine)

    def stop(self):
        self.client.stop()


def _wait(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_mqtt_every_event_once_across_a_broker_restart(broker, tmp_path):
    c = Consumer(SqliteStore(tmp_path / "ev.db"))
    sub = MqttSubscriber("127.0.0.1", broker.port, c.handle, client_id="ff-test-consumer")
    pub = Publisher(broker.port)
    try:
        assert sub.wait_ready(10)
        events = [to_json(match_event(i)) for i in range(300)]
        for e in events[:150]:
            pub.publish(e)
        pub.publish(events[10])  # a device resending after a crash
        pub.publish("{broken")
        assert _wait(lambda: c.stats.received >= 152)
        broker.stop()
        broker.start()  # same port, persistent sessions kept
        for e in events[150:]:
            pub.publish(e)
        assert _wait(lambda: c.stats.stored == 300, 30), c.stats
        assert c.stats.duplicates >= 1 and c.stats.invalid == 1
        assert c.store.count() == 300
    finally:
        pub.stop()
        sub.stop()


def test_cli_consumes_and_reports_unreachable(broker, tmp_path, cli_env):
    out = tmp_path / "ev.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "facefleet", "events", "--broker", "127.0.0.1", "--port", str(broker.port),
                             "--out", str(out), "--follow", "--duration", "8", "--client-id", "ff-cli-consumer"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    pub = Publisher(broker.port)
    try:
        time.sleep(2.5)  # the consumer subscribes
        for i in range(5):
            pub.publish(to_json(match_event(i)))
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        pub.stop()
    assert proc.returncode == 0, stderr
    assert len(out.read_text().splitlines()) == 5
    assert stdout.count("obama") == 5
    assert json.loads(stderr.strip().splitlines()[-1])["stored"] == 5
    from component.broker import free_port

    r = subprocess.run([sys.executable, "-m", "facefleet", "events", "--broker", "127.0.0.1", "--port", str(free_port()),
                        "--out", str(tmp_path / "x.jsonl"), "--connect-timeout", "2"],
                       capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "unreachable" in r.stderr.strip().splitlines()[-1]
