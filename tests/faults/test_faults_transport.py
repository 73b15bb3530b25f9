"""Transport faults (issue 12: 6): a slow link must not stall delivery nor flood the broker with duplicates."""

from __future__ import annotations

from facefleet.events import ErrorEvent
from facefleet.transport.mqtt import MqttSink
from facefleet.transport.spool import Forwarder, Spool, SpooledPublisher

from .slowlink import SlowLink

# broker and collector: tests/conftest.py

def test_puback_slower_than_the_ack_timeout_still_delivers_without_duplicates(tmp_path, broker, collector):
    """PUBACKs take 2 s, the configured ack timeout is 1 s: the old fixed deadline confirmed none
    and re-published every batch; now each event reaches the broker once and is confirmed."""
    from component.helpers import wait_until

    link = SlowLink(broker.port, delay_s=2.0)
    spool = Spool(tmp_path / "s.sqlite")
    pub = SpooledPublisher(spool, "facefleet/{thing}/events/{type}", "thing-1")
    ids = set()
    for i in range(200):
        ev = ErrorEvent(device="thing-1", source="sink", message=f"event {i}")
        ids.add(ev.event_id)
        pub.publish(ev)
    sink = MqttSink("127.0.0.1", link.port, ack_timeout_s=1)
    fwd = Forwarder(spool, sink, batch=200).start()
    try:
        assert wait_until(lambda: spool.depth == 0, 90), f"{spool.depth} unconfirmed"
        assert collector.wait_for(ids, 10)
        assert collector.received == len(ids)  # every event exactly once at the broker
        assert sink.inflight.srtt is not None and sink.inflight.srtt > 1.0  # the timeout follows the link
    finally:
        fwd.stop()
        sink.close()
        link.close()
        spool.close()
