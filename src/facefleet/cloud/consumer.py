"""The cloud consumer of match events: validate, de-duplicate, store.

Devices publish at least once (QoS 1, a durable spool that resends after a crash), so a
consumer sees duplicates; every event carries a unique ``event_id`` to drop them. Messages that
do not satisfy the event JSON Schema are counted and logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from facefleet.errors import FacefleetError
from facefleet.events import json_schema
from facefleet.names import printable

log = logging.getLogger(__name__)

EVENTS_FILTER = "facefleet/+/events/#"


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0


class JsonlStore:
    """Append-only JSONL; the ids already in the file are known at start, so a restarted
    consumer does not write an event twice."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: set[str] = set()
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    self.seen.add(json.loads(line)["event_id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        elif not path.parent.is_dir():
            raise FacefleetError(f"folder does not exist: {path.parent}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._f = os.fdopen(fd, "a", encoding="utf-8")

    def add(self, event: dict, raw: str) -> bool:
        if event["event_id"] in self.seen:
            return False
        self._f.write(raw.strip() + "\n")
        self._f.flush()
        self.seen.add(event["event_id"])
        return True

    def close(self) -> None:
        self._f.close()


class SqliteStore:
    """One row per event id (the primary key is the de-duplication)."""

    def __init__(self, path: Path):
        if not path.parent.is_dir():
            raise FacefleetError(f"folder does not exist: {path.parent}")
        if not path.exists():  # personal data: 0600, like the JSONL store and the gallery
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        elif path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("""CREATE TABLE IF NOT EXISTS events (
            event_id TEXT PRIMARY KEY, type TEXT, device TEXT, camera_id TEXT, identity TEXT,
            decision TEXT, timestamp TEXT, body TEXT NOT NULL)""")
        self._db.commit()

    def add(self, event: dict, raw: str) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?)",
            (event["event_id"], event.get("type"), event.get("device"), event.get("camera_id"),
             event.get("identity"), event.get("decision"), event.get("timestamp"), raw))
        self._db.commit()
        return cur.rowcount == 1

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def open_store(target: str) -> JsonlStore | SqliteStore:
    if target.startswith(("postgresql://", "postgres://")):  # fleet scale: see cloud/stores.py
        from facefleet.cloud.stores import PostgresStore

        return PostgresStore(target)
    p = Path(target)
    return SqliteStore(p) if p.suffix in (".db", ".sqlite", ".sqlite3") else JsonlStore(p)


def follow_line(e: dict) -> str:
    """A readable line for a person watching the stream."""
    where = f"{e.get('device')}/{e.get('camera_id', '-')}"
    if e.get("type") == "match":
        who = e.get("identity") if e.get("decision") == "identified" else "unknown"
        sim = e.get("similarity")
        q = e.get("quality") or {}
        return (f"{e.get('timestamp')} {where} track {e.get('track_id')}: {who}"
                + (f" ({sim:.2f})" if isinstance(sim, float) else "") + f" face {q.get('face_px', 0):.0f}px")
    if e.get("type") == "error":
        return f"{e.get('timestamp')} {where} ERROR {e.get('source')}: {e.get('message')}"
    return f"{e.get('timestamp')} {where} {e.get('type')}"


@dataclass
class Consumer:
    """Validates, de-duplicates and stores messages from any transport (MQTT, SQS)."""

    store: Any
    follow: TextIO | None = None
    stats: Stats = field(default_factory=Stats)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import jsonschema

        self._validator = jsonschema.Draft202012Validator(json_schema())

    def handle(self, payload: bytes | str, topic: str = "") -> bool:
        """One message. True when it was a new, valid event (stored)."""
        raw = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        with self._lock:
            self.stats.received += 1
            try:
                event = json.loads(raw)
            except json.JSONDecodeError as e:
                return self._invalid(topic, f"not JSON ({e.msg})")
            errors = sorted(self._validator.iter_errors(event), key=lambda err: list(err.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].path) or "(top)"
                return self._invalid(topic, f"{where}: {errors[0].message[:200]}")
            if not self.store.add(event, raw):
                self.stats.duplicates += 1
                return False
            self.stats.stored += 1
            if self.follow is not None:
                self.follow.write(printable(follow_line(event), 2000) + "\n")  # no ESC/BEL/bidi to the terminal
                self.follow.flush()
            return True

    def _invalid(self, topic: str, why: str) -> bool:
        self.stats.invalid += 1
        log.warning("invalid message on %s: %s", topic or "?", why)
        return False


class MqttSubscriber:
    """MQTT 5 subscription (awscrt) that reconnects on its own.

    A persistent session (stable client id, session expiry, rejoin) makes the broker keep the
    QoS 1 messages published while the consumer is away (a broker restart, a network cut).
    """

    def __init__(self, host: str, port: int, on_message: Callable[[bytes, str], Any], topic: str = EVENTS_FILTER,
                 cert: str | None = None, key: str | None = None, ca: str | None = None, client_id: str | None = None,
                 session_expiry_s: int = 86_400):
        try:
            from awscrt import io, mqtt5
        except ImportError:
            raise FacefleetError("the MQTT consumer needs awscrt: pip install awsiotsdk") from None
        import socket

        self._mqtt5 = mqtt5
        self.topic = topic
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None  # the broker's SUBACK reason when it refused the subscription
        self._answered = threading.Event()
        tls_ctx = None
        if cert or key:
            if not (cert and key):
                raise FacefleetError("mTLS needs both --cert and --key")
            for f in (cert, key, ca):
                if f and not Path(f).is_file():
                    raise FacefleetError(f"file not found: {f}")
            opts = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
            if ca:
                opts.override_default_trust_store_from_path(None, ca)
            tls_ctx = io.ClientTlsContext(opts)

        def on_publish(data) -> None:
            p = data.publish_packet
            on_message(bytes(p.payload or b""), p.topic)

        def on_success(data) -> None:
            self.connected.set()
            if data.connack_packet.session_present:
                self.subscribed.set()  # the broker kept our subscription (and queued messages)
                self._answered.set()
            else:
                self._subscribe()

        def on_down(_data) -> None:
            self.connected.clear()
            self.subscribed.clear()

        self._client = mqtt5.Client(mqtt5.ClientOptions(
            host_name=host, port=port, tls_ctx=tls_ctx,
            connect_options=mqtt5.ConnectPacket(client_id=client_id or f"facefleet-consumer-{socket.gethostname()}"[:64],
                                                keep_alive_interval_sec=30, session_expiry_interval_sec=session_expiry_s),
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            min_reconnect_delay_ms=200, max_reconnect_delay_ms=5000,
            on_publish_callback_fn=on_publish,
            on_lifecycle_event_connection_success_fn=on_success,
            on_lifecycle_event_disconnection_fn=on_down,
            on_lifecycle_event_connection_failure_fn=on_down,
        ))
        self._client.start()

    def _subscribe(self) -> None:
        mqtt5 = self._mqtt5
        fut = self._client.subscribe(mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(topic_filter=self.topic, qos=mqtt5.QoS.AT_LEAST_ONCE)]))
        fut.add_done_callback(self._on_suback)

    def _on_suback(self, fut) -> None:
        """A SUBACK is an answer, not a success: MQTT 5 reason codes >= 0x80 refuse the filter
        (MQTT 5.0 section 3.9.3, e.g. 0x87 Not authorized)."""
        if fut.exception() is not None:
            return  # the connection dropped first: on_success subscribes again
        codes = list(fut.result().reason_codes or [])
        bad = [c for c in codes if int(c) >= 0x80]
        if bad or not codes:
            self.refused = ", ".join(getattr(c, "name", str(c)) for c in bad) or "no reason code"
            log.error("the broker refused the subscription to %s: %s", self.topic, self.refused)
        else:
            self.subscribed.set()
        self._answered.set()

    def wait_ready(self, timeout_s: float) -> bool:
        """True once subscribed; raises when the broker refused the subscription."""
        self._answered.wait(timeout_s)
        if self.refused:
            raise FacefleetError(f"the broker refused the subscription to {self.topic}: {self.refused} "
                                 "(check the IoT policy allows iot:Subscribe to this filter and iot:Receive on its topics)")
        return self.subscribed.is_set()

    def stop(self) -> None:
        self._client.stop()


# Errors a queue consumer rides out for as long as they last: the network, and SQS saying it is
# busy or broken (5xx, throttling). Anything else (no such queue, access denied) is a mistake to report.
TRANSIENT_CODES = {"ThrottlingException", "Throttling", "RequestThrottled", "ServiceUnavailable", "InternalError",
                   "InternalFailure", "RequestTimeout", "RequestTimeoutException", "KMS.ThrottlingException"}


def is_transient(e: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(e, (ConnectionError, HTTPClientError)):  # EndpointConnectionError, ReadTimeoutError, ...
        return True
    if isinstance(e, ClientError):
        meta = e.response.get("ResponseMetadata") or {}
        return e.response.get("Error", {}).get("Code") in TRANSIENT_CODES or meta.get("HTTPStatusCode", 0) >= 500
    return False


class Stopped(Exception):
    """The consumer was asked to stop while it waited out an outage."""


def resilient(stop: Callable[[], bool], sleep: Callable[[float], None], max_wait_s: float = 300.0):
    """A tenacity retrier: exponential backoff with jitter up to ``max_wait_s`` for as long as the
    outage lasts (a consumer runs for months), until ``stop()``."""
    import tenacity

    def log_retry(rs: tenacity.RetryCallState) -> None:
        e = rs.outcome.exception() if rs.outcome else None
        log.warning("SQS unreachable (%s: %s); retry %d in %.0f s", type(e).__name__, str(e).splitlines()[0][:200],
                    rs.attempt_number, rs.next_action.sleep if rs.next_action else 0)

    def sleep_unless_stopped(seconds: float) -> None:
        end = seconds
        while end > 0:
            if stop():
                raise Stopped
            step = min(end, 1.0)
            sleep(step)
            end -= step

    return tenacity.Retrying(retry=tenacity.retry_if_exception(is_transient), reraise=True,
                             wait=tenacity.wait_exponential_jitter(initial=1, max=max_wait_s, jitter=1),
                             sleep=sleep_unless_stopped, before_sleep=log_retry)


def consume_sqs(sqs, queue_url: str, consumer: Consumer, stop: Callable[[], bool], wait_s: int = 10,
                sleep: Callable[[float], None] | None = None) -> None:
    """Long-poll an SQS queue fed by the IoT topic rule; delete each message once handled
    (stored, duplicate or invalid: none of them should come back). Network and service errors
    are waited out with backoff; a message whose delete failed comes back and is a duplicate.
    One DeleteMessageBatch per receive: a tenth of the requests (SQS bills per request)."""
    import time

    retry = resilient(stop, sleep or time.sleep)
    try:
        while not stop():
            resp = retry(sqs.receive_message, QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
            msgs = resp.get("Messages", [])
            for msg in msgs:
                consumer.handle(msg["Body"], "sqs")
            if msgs:  # an entry that fails comes back after the visibility timeout: a duplicate then
                retry(sqs.delete_message_batch, QueueUrl=queue_url,
                      Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
    except Stopped:
        log.info("stopped while waiting for SQS to come back")


def setup_rule(iot, sqs, *, rule_name: str, queue_name: str, role_arn: str) -> tuple[str, str]:
    """An AWS IoT topic rule that routes every facefleet event into an SQS queue (created if
    missing), so any number of consumers share the stream without an MQTT session each.
    Idempotent: a second run updates the rule (CreateQueue returns the existing queue)."""
    from facefleet.cloud.aws import error_code

    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    payload = {
        "sql": f"SELECT * FROM '{EVENTS_FILTER}'",
        "awsIotSqlVersion": "2016-03-23",
        "ruleDisabled": False,
        "description": "facefleet match events to SQS",
        "actions": [{"sqs": {"queueUrl": queue_url, "roleArn": role_arn, "useBase64": False}}],
    }
    try:
        iot.create_topic_rule(ruleName=rule_name, topicRulePayload=payload)
    except Exception as e:
        if error_code(e) != "ResourceAlreadyExistsException":
            raise
        iot.replace_topic_rule(ruleName=rule_name, topicRulePayload=payload)
        log.info("topic rule %s existed: replaced", rule_name)
    return rule_name, queue_url
