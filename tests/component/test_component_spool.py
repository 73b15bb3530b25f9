"""The durable spool: bounded, confirmed-only deletion, and delivery through a real mosquitto
broker across a 30 s outage and across a killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from facefleet.events import ErrorEvent
from facefleet.transport.mqtt import MqttSink
from facefleet.transport.spool import Forwarder, Spool, SpooledPublisher

TOPIC = "facefleet/{thing}/events/{type}"


class _HalfSink:
    """Confirms every other item: the others must stay spooled."""

    def __init__(self):
        self.seen = []

    def send(self, items):
        self.seen += [it.seq for it in items]
        return [it.seq % 2 == 0 for it in items]


def test_spool_is_bounded_drops_oldest_and_counts(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_events=10)
    for i in range(25):
        spool.put("t", "error", f'{{"n": {i}}}')
    assert spool.depth == 10 and spool.dropped == 15
    kept = [json.loads(it.payload)["n"] for it in spool.peek(100)]
    assert kept == list(range(15, 25))
    spool.close()
    again = Spool(tmp_path / "s.sqlite", max_events=10)  # survives a reopen, counter included
    assert again.depth == 10 and again.dropped == 15


def test_only_confirmed_events_leave_the_spool(tmp_path):
    spool = Spool(tmp_path / "s.sqlite")
    spool.put_many([("t", "error", b"{}")] * 6)
    fwd = Forwarder(spool, _HalfSink(), batch=6)
    try:
        fwd._round()
    except Exception as e:  # 3 of 6 unconfirmed -> the forwarder must retry
        assert "3 of 6" in str(e)
    else:
        raise AssertionError("partial confirmation was not reported")
    assert sorted(it.seq % 2 for it in spool.peek(10)) == [1, 1, 1]
    assert spool.depth == 3


def test_broker_down_30s_in_the_middle_of_10000_events(tmp_path, broker, collector):
    spool = Spool(tmp_path / "spool.sqlite", max_events=50_000)
    pub = SpooledPublisher(spool, TOPIC, "thing-1")
    sink = MqttSink("127.0.0.1", broker.port)
    fwd = Forwarder(spool, sink, batch=200).start()
    ids: set[str] = set()

    def produce():
        for b in range(200):
            for i in range(50):
                ev = ErrorEvent(device="thing-1", source="sink", message=f"event {b * 50 + i}")
                ids.add(ev.event_id)
                pub.publish(ev)
            time.sleep(0.03)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        end = time.monotonic() + 60
        while collector.received < 1500 and time.monotonic() < end:
            time.sleep(0.02)
        assert collector.received >= 1500, "events did not flow before the outage"
        broker.stop()
        outage_start_received = len(collector.ids)
        time.sleep(30)
        assert len(collector.ids) == outage_start_received  # nothing can arrive while the broker is down
        assert fwd.failures > 0 and spool.depth > 0
        broker.start()
        producer.join(60)
        assert len(ids) == 10_000
        assert collector.wait_for(ids, 90), f"{len(ids - collector.ids)} event(s) never arrived"
        assert fwd.drain(10)
        assert spool.dropped == 0
    finally:
        producer.join(60)
        fwd.stop()
        sink.close()


CHILD = textwrap.dedent("""
    import sys, time
    from facefleet.events import ErrorEvent
    from facefleet.transport.mqtt import MqttSink
    from facefleet.transport.spool import Forwarder, Spool, SpooledPublisher
    spool_path, port, n, ids_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    spool = Spool(spool_path)
    pub = SpooledPublisher(spool, "facefleet/{thing}/events/{type}", "thing-1")
    if n:
        evs = [ErrorEvent(device="thing-1", source="sink", message=f"event {i}") for i in range(n)]
        for e in evs:
            pub.publish(e)
        open(ids_file, "w").write("\\n".join(e.event_id for e in evs))
    Forwarder(spool, MqttSink("127.0.0.1", port), batch=50).start()
    while True:
        time.sleep(1)
""")


def test_killed_process_resends_its_spool(tmp_path, broker, collector):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    spool_path, ids_file = tmp_path / "spool.sqlite", tmp_path / "ids.txt"
    child = subprocess.Popen([sys.executable, str(script), str(spool_path), str(broker.port), "20000", str(ids_file)])
    try:
        end = time.monotonic() + 60
        while collector.received < 1000 and time.monotonic() < end and child.poll() is None:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert collector.received >= 1000
        ids = set(ids_file.read_text().split())
        assert len(ids) == 20_000
        left = Spool(spool_path)
        pending = left.depth
        left.close()
        assert 0 < pending < 20_000, "the kill did not happen mid-stream"
        assert len(ids - collector.ids) > 0
        child = subprocess.Popen([sys.executable, str(script), str(spool_path), str(broker.port), "0", str(ids_file)])
        assert collector.wait_for(ids, 90), f"{len(ids - collector.ids)} event(s) never arrived after the restart"
    finally:
        child.kill()
        child.wait(10)


def test_component_killed_and_restarted_resends_its_spool(tmp_path, assets, broker, collector, long_video):
    """The real component (video camera, status events) publishing to mosquitto; the broker goes
    away, events pile up in the spool, the process is SIGKILLed, then restarted: every event
    that was spooled arrives."""
    from greengrass.nucleus import Nucleus

    from .helpers import base_config

    cfg = base_config(assets, cameras=[{"id": "stage", "source": str(long_video), "fps_cap": None}], status_interval_s=1)
    nucleus = Nucleus(cfg, thing="thing-1")
    env = {**os.environ, **nucleus.environ()}
    child_cmd = [sys.executable, str(Path(__file__).parent / "component_child.py"), str(tmp_path), str(assets / "models"),
                 str(broker.port)]
    child = subprocess.Popen(child_cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "serving"
        end = time.monotonic() + 60
        while collector.received < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert collector.received >= 2, "no event reached the broker"
        broker.stop()
        spool_file = tmp_path / "spool.sqlite"
        pending: set[str] = set()
        end = time.monotonic() + 60
        while len(pending) < 5 and time.monotonic() < end:
            time.sleep(0.5)
            spool = Spool(spool_file)
            pending = {json.loads(it.payload)["event_id"] for it in spool.peek(100_000)}
            spool.close()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        spool = Spool(spool_file)
        pending = {json.loads(it.payload)["event_id"] for it in spool.peek(100_000)}
        kinds = {it.kind for it in spool.peek(100_000)}
        spool.close()
        assert len(pending) >= 5 and "status" in kinds
        assert not pending & collector.ids
        broker.start()
        child = subprocess.Popen(child_cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdout.readline().strip() == "serving"
        assert collector.wait_for(pending, 60), f"{len(pending - collector.ids)} spooled event(s) never arrived"
        assert nucleus.states == ["RUNNING", "RUNNING"]
    finally:
        child.kill()
        child.wait(10)
        nucleus.close()
