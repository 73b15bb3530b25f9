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
                             "--out", str(out), "--follow", "--duration", "6", "--client-id", "ff-cli-consumer"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    pub = Publisher(broker.port)
    try:
        head = []
        for line in proc.stderr:  # publish once the consumer says it is subscribed, not after a guessed delay
            head.append(line)
            if "subscribed to" in line:
                break
        for i in range(5):
            pub.publish(to_json(match_event(i)))
        stdout, stderr = proc.communicate(timeout=30)
        stderr = "".join(head) + stderr
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


def test_setup_rule_twice_updates_the_rule(mocked_aws):
    """Item 13: a second 'events setup-rule' (e.g. with a new role) succeeds and updates the rule."""
    iot, sqs = mocked_aws.client("iot"), mocked_aws.client("sqs")
    setup_rule(iot, sqs, rule_name="ff_events", queue_name="ff-events", role_arn="arn:aws:iam::123456789012:role/a")
    rule, _ = setup_rule(iot, sqs, rule_name="ff_events", queue_name="ff-events", role_arn="arn:aws:iam::123456789012:role/b")
    assert iot.get_topic_rule(ruleName=rule)["rule"]["actions"][0]["sqs"]["roleArn"].endswith("role/b")
    assert len(sqs.list_queues()["QueueUrls"]) == 1


def _flaky(client, operation: str, failures: list):
    """Make the client's next calls of ``operation`` fail the way botocore fails them: raised from
    the HTTP send (before-send), so botocore's own retry handling sees them first."""
    def before_send(**_kw):
        if failures:
            raise failures.pop(0)

    client.meta.events.register_first(f"before-send.sqs.{operation}", before_send)


def _sqs_without_botocore_retries(session):
    from botocore.config import Config

    return session.client("sqs", config=Config(retries={"total_max_attempts": 1}))


def test_sqs_consumer_rides_out_network_and_service_outages(mocked_aws, tmp_path, caplog):
    """Item 9: EndpointConnectionError / 5xx / throttling past botocore's retries are waited out
    with backoff; every event arrives once the queue is back."""
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    sqs = _sqs_without_botocore_retries(mocked_aws)
    url = sqs.create_queue(QueueName="ff-events")["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=to_json(match_event(i)))
    down = EndpointConnectionError(endpoint_url=url)
    err500 = ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an internal error"},
                          "ResponseMetadata": {"HTTPStatusCode": 500}}, "ReceiveMessage")
    throttled = ClientError({"Error": {"Code": "RequestThrottled", "Message": "slow down"},
                             "ResponseMetadata": {"HTTPStatusCode": 403}}, "DeleteMessageBatch")
    _flaky(sqs, "ReceiveMessage", [down] * 20 + [err500, ReadTimeoutError(endpoint_url=url)])
    _flaky(sqs, "DeleteMessageBatch", [throttled, down])
    slept: list[float] = []
    c = Consumer(SqliteStore(tmp_path / "ev.db"))
    consume_sqs(sqs, url, c, stop=lambda: c.stats.stored == 5 and len(slept) > 0, wait_s=0, sleep=slept.append)
    assert c.stats.stored == 5 and c.stats.duplicates == 0
    assert max(slept) == 1.0 and sum(slept) > 300  # capped 1 s naps; backoff grew to minutes
    assert "SQS unreachable (EndpointConnectionError" in caplog.text


def test_sqs_consumer_stops_during_an_outage_and_reports_real_errors(mocked_aws, tmp_path):
    from botocore.exceptions import ClientError, EndpointConnectionError

    sqs = _sqs_without_botocore_retries(mocked_aws)
    url = sqs.create_queue(QueueName="ff-events")["QueueUrl"]
    _flaky(sqs, "ReceiveMessage", [EndpointConnectionError(endpoint_url=url)] * 1000)
    slept: list[float] = []
    c = Consumer(SqliteStore(tmp_path / "ev.db"))
    consume_sqs(sqs, url, c, stop=lambda: len(slept) >= 50, wait_s=0, sleep=slept.append)  # returns, no raise
    with pytest.raises(ClientError, match=r"NonExistentQueue|QueueDoesNotExist"):
        consume_sqs(mocked_aws.client("sqs"), url + "-gone", c, stop=lambda: False, wait_s=0, sleep=slept.append)


def test_a_refused_subscription_is_an_error_not_success():
    """Item 13: a SUBACK whose reason code is a failure (MQTT 5.0 section 3.9.3: >= 0x80; AWS IoT
    Core answers 0x87 Not authorized when the policy denies iot:Subscribe) is refused, not success.
    mosquitto 2.0.11 grants an ACL-denied filter and filters at delivery, so the SUBACK is awscrt's
    own SubackPacket, completed the way awscrt completes the subscribe future."""
    from concurrent.futures import Future

    from awscrt import mqtt5

    from component.broker import free_port
    from facefleet.errors import FacefleetError

    sub = MqttSubscriber("127.0.0.1", free_port(), lambda *_: None, client_id="ff-refused")
    try:
        refused: Future = Future()
        refused.set_result(mqtt5.SubackPacket(reason_codes=[mqtt5.SubackReasonCode.NOT_AUTHORIZED]))
        sub._on_suback(refused)
        with pytest.raises(FacefleetError, match="refused the subscription to facefleet/\\+/events/#: NOT_AUTHORIZED"):
            sub.wait_ready(1)
        granted: Future = Future()
        granted.set_result(mqtt5.SubackPacket(reason_codes=[mqtt5.SubackReasonCode.GRANTED_QOS_1]))
        sub.refused = None
        sub._on_suback(granted)
        assert sub.wait_ready(1) is True
    finally:
        sub.stop()
