"""Events at fleet scale (issue 15 part 6): competing consumers on one SQS queue (moto), one real
PostgreSQL server, every event stored exactly once."""

import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from facefleet.cloud.consumer import Consumer, SqliteStore, consume_sqs, open_store
from facefleet.cloud.stores import PostgresStore, read_events
from facefleet.errors import FacefleetError
from facefleet.events import Candidate, MatchEvent, Models, Quality, to_json

from .postgres import PostgresServer, pg_bin


@pytest.fixture(scope="module")
def pg_server():
    bindir = pg_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: ./scripts/test installs Debian's postgresql package")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A fresh database per test."""
    import psycopg

    name = f"t{random.getrandbits(40):x}"
    with psycopg.connect(pg_server.url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return pg_server.url.rsplit("/", 1)[0] + "/" + name


def _event(i: int) -> str:
    return to_json(MatchEvent(
        device=f"pi-{i % 7}", camera_id=f"cam{i % 2}", track_id=i, decision="identified" if i % 3 else "unknown",
        identity="obama" if i % 3 else None, similarity=0.5 if i % 3 else 0.1,
        best_candidate=None if i % 3 else Candidate(identity="obama", similarity=0.1), threshold=0.32,
        frame_index=i, first_frame=i, last_frame=i, bbox=(1, 2, 3, 4),
        quality=Quality(pre_norm=20.0, face_px=80, det_score=0.8, evidence_frames=3, evidence_weight=2.0),
        models=Models(detector="a" * 16, recognizer="b" * 16), margin=0.1))


def _send(sqs, url: str, bodies: list[str]) -> None:
    for k in range(0, len(bodies), 10):
        r = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": b}
                                                          for j, b in enumerate(bodies[k:k + 10])])
        assert not r.get("Failed")


def test_postgres_store_is_idempotent_and_readable(pg_url):
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    c = Consumer(store)
    bodies = [_event(i) for i in range(5)]
    assert all(c.handle(b) for b in bodies)
    assert not c.handle(bodies[2])  # a redelivery
    store.close()
    again = Consumer(PostgresStore(pg_url))  # a restarted (or second) consumer on the same table
    assert not again.handle(bodies[0]) and again.handle(_event(9))
    assert again.store.count() == 6
    again.store.close()
    got = list(read_events(pg_url))
    assert sorted(e["event_id"] for e in got) == sorted(json.loads(b)["event_id"] for b in [*bodies, _event(9)]) or len(got) == 6
    assert {e["type"] for e in got} == {"match"} and len(got) == 6


class AtomicSqs:
    """A boto3 SQS client on moto whose calls are atomic, as SQS's are.

    moto's SQS backend is not thread-safe: ``Queue.delete_message`` rebuilds ``_messages``
    without ``_messages_lock`` (moto 5.2.5 moto/sqs/models.py:613-631) while ``add_message``
    appends under it (:573), so a message sent by another thread meanwhile can vanish, which
    real SQS never does. Calls go through one lock here;
    long polls are emulated outside it (poll, then sleep briefly until ``WaitTimeSeconds``) so
    that a waiting consumer does not block the others."""

    def __init__(self, client, lock: threading.Lock):
        self._c, self._lock = client, lock

    def receive_message(self, WaitTimeSeconds=0, **kw):
        deadline = time.monotonic() + WaitTimeSeconds
        while True:
            with self._lock:
                resp = self._c.receive_message(WaitTimeSeconds=0, **kw)
            if resp.get("Messages") or time.monotonic() >= deadline:
                return resp
            time.sleep(0.02)

    def __getattr__(self, name):
        fn = getattr(self._c, name)

        def call(*a, **kw):
            with self._lock:
                return fn(*a, **kw)
        return call


def test_two_consumers_one_queue_10000_events_stored_exactly_once(mocked_aws, pg_url):
    """10,000 events plus 1,000 duplicates (a device resending after a crash) through one SQS
    queue, two consumers competing for it (each its own SQS client and database session), one
    table: every event stored exactly once.

    moto's SQS scans the whole queue several times per received message (moto 5.2.5
    moto/sqs/models.py: ``Queue.messages``, and ``get_queue_attributes`` from
    ``is_message_valid_based_on_retention_period`` in ``receive_message``), so an 11,000-message
    backlog costs many minutes; the producer keeps the queue shallow instead, as a fleet sending
    while its consumers keep up does."""
    lock = threading.Lock()
    sqs = AtomicSqs(mocked_aws.client("sqs"), lock)
    url = sqs.create_queue(QueueName="ff-events")["QueueUrl"]
    bodies = [_event(i) for i in range(10_000)]
    rng = random.Random(15)
    mixed = bodies + [bodies[i] for i in rng.sample(range(10_000), 1_000)]
    rng.shuffle(mixed)

    consumers = [Consumer(PostgresStore(pg_url)) for _ in range(2)]
    done = threading.Event()
    errors = []

    def work(c):
        try:
            consume_sqs(AtomicSqs(mocked_aws.client("sqs"), lock), url, c, done.is_set, wait_s=1)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    received = lambda: sum(c.stats.received for c in consumers)  # noqa: E731
    for k in range(0, len(mixed), 10):
        while k - received() > 30 and not errors:  # keep the queue shallow (see above)
            time.sleep(0.005)
        _send(sqs, url, mixed[k:k + 10])

    def drained() -> bool:
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return a["ApproximateNumberOfMessages"] == a["ApproximateNumberOfMessagesNotVisible"] == "0"

    while not drained() and not errors and all(t.is_alive() for t in threads):
        time.sleep(0.1)
    done.set()
    for t in threads:
        t.join()
    assert not errors
    stored = [c.stats.stored for c in consumers]
    assert all(s > 0 for s in stored)  # both competed for the queue
    assert sum(stored) == 10_000
    assert sum(c.stats.duplicates for c in consumers) == sum(c.stats.received for c in consumers) - 10_000 >= 1_000
    assert sum(c.stats.invalid for c in consumers) == 0
    ids = [e["event_id"] for e in read_events(pg_url)]
    assert len(ids) == len(set(ids)) == 10_000
    assert set(ids) == {json.loads(b)["event_id"] for b in bodies}
    for c in consumers:
        c.store.close()


def test_cli_competing_consumer_processes(pg_url, aws_env, tmp_path, cli_env):
    """Two ``facefleet events --queue URL --store postgresql://...`` processes on one queue of a
    moto server (the real HTTP API), one table."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    procs = []
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        sqs = boto3.client("sqs", region_name="eu-west-1", endpoint_url=endpoint)
        url = sqs.create_queue(QueueName="ff-cli")["QueueUrl"]
        bodies = [_event(i) for i in range(300)]
        _send(sqs, url, bodies + bodies[:50])
        env = {**cli_env, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "eu-west-1", "PYTHONPATH": os.pathsep.join(sys.path)}
        cmd = [sys.executable, "-m", "facefleet", "events", "--queue", url, "--store", pg_url, "--sqs-wait", "1"]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        store = PostgresStore(pg_url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            left = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"][
                "ApproximateNumberOfMessages"])
            if store.count() == 300 and left == 0:
                break
            time.sleep(0.2)
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-500:] for p in procs]
        assert store.count() == 300
        store.close()
    finally:
        for p in procs:
            p.terminate()
            p.communicate(timeout=30)
        server.stop()


def test_bad_store_urls_are_one_line_errors(pg_server, tmp_path, cli_env):
    with pytest.raises(FacefleetError, match="cannot connect to PostgreSQL"):
        PostgresStore(pg_server.url.rsplit("/", 1)[0] + "/no_such_db")
    with pytest.raises(FacefleetError, match="not found"):
        list(read_events(str(tmp_path / "nope.sqlite")))
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(FacefleetError, match="not an event database"):
        list(read_events(str(tmp_path / "junk.sqlite")))
    r = subprocess.run([sys.executable, "-m", "facefleet", "events", "--queue", "https://sqs.eu-west-1.amazonaws.com/1/q",
                        "--store", "postgresql://nobody@127.0.0.1:1/x", "--region", "eu-west-1"],
                       env={**cli_env, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("facefleet: error: cannot connect to PostgreSQL")
    assert "Traceback" not in r.stderr


def test_sqlite_store_reads_back(tmp_path):
    store = SqliteStore(tmp_path / "ev.sqlite")
    c = Consumer(store)
    for i in range(3):
        c.handle(_event(i))
    store.close()
    assert [e["track_id"] for e in read_events(str(tmp_path / "ev.sqlite"))] == [0, 1, 2]


def test_report_reads_postgresql(pg_url, tmp_path, cli_env):
    """The report takes the PostgreSQL store like the SQLite one; the page never shows the URL's user."""
    from .test_report import fleet_events

    c = Consumer(PostgresStore(pg_url))
    bodies = fleet_events()
    assert all(c.handle(b) for b in bodies)
    c.store.close()
    r = subprocess.run([sys.executable, "-m", "facefleet", "events", "report", "--db", pg_url, "--out", str(tmp_path / "r")],
                       env={**cli_env, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    matches = sum(1 for b in bodies if '"type":"match"' in b)
    assert page.count("<img ") == 5 and f"{matches} match events" in page
    assert "facefleet@" not in page


def test_consume_sqs_deletes_in_batches(mocked_aws, tmp_path):
    """One DeleteMessageBatch per ReceiveMessage: a tenth of the requests SQS bills at fleet scale."""
    sqs = mocked_aws.client("sqs")
    url = sqs.create_queue(QueueName="ff-batch")["QueueUrl"]
    _send(sqs, url, [_event(i) for i in range(30)])
    calls = []
    sqs.meta.events.register("before-call.sqs.*", lambda model, **_: calls.append(model.name))
    c = Consumer(SqliteStore(tmp_path / "ev.sqlite"))
    polls = []
    consume_sqs(sqs, url, c, stop=lambda: polls.append(1) or len(polls) > 4, wait_s=0)
    assert c.stats.stored == 30
    assert calls.count("DeleteMessage") == 0 and calls.count("DeleteMessageBatch") == calls.count("ReceiveMessage") - 1 == 3
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == left["ApproximateNumberOfMessagesNotVisible"] == "0"
    c.store.close()
