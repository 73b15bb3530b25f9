"""MqttSink: a PUBACK reason code awscrt does not know fails that one event, not the batch."""

from concurrent.futures import Future

from awscrt import mqtt5

from component.broker import free_port
from facefleet.transport.mqtt import MqttSink
from facefleet.transport.spool import SpoolItem


def _done(code: int) -> Future:
    """What awscrt 0.36.1 mqtt5.Client.publish completes with (mqtt5.py:1942-1953): the reason code
    goes through _try_puback_reason_code, which returns None for a value outside PubackReasonCode."""
    data = mqtt5.PublishCompletionData()
    data.puback = mqtt5.PubackPacket(reason_code=mqtt5._try_puback_reason_code(code))
    f: Future = Future()
    f.set_result(data)
    return f


def test_unknown_puback_reason_code_fails_only_its_item():
    sink = MqttSink("127.0.0.1", free_port(), ack_timeout_s=1)
    try:
        codes = iter([0x00, 0xA0, 0x10, 0x87])  # success, unknown to awscrt, no matching subscribers (success), not authorized
        sink._client.publish = lambda packet: _done(next(codes))
        sink.connected.set()
        items = [SpoolItem(seq=i, topic="facefleet/pi/events/match", kind="match", payload=b"{}", t_put=0.0) for i in range(4)]
        assert sink.send(items) == [True, False, True, False]
    finally:
        sink.close()
