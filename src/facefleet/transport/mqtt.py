"""MQTT 5 sink (awscrt) for use outside Greengrass: plain TCP to a broker on loopback, or mTLS
to AWS IoT Core. Publishes QoS 1 and reports an item confirmed only on a successful PUBACK."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import Future

from facefleet.errors import FacefleetError
from facefleet.transport.inflight import InFlight
from facefleet.transport.spool import SpoolItem

log = logging.getLogger(__name__)


class MqttSink:
    def __init__(self, host: str, port: int, client_id: str | None = None, cert: str | None = None,
                 key: str | None = None, ca: str | None = None, ack_timeout_s: int = 5, max_ack_timeout_s: int = 120):
        try:
            from awscrt import io, mqtt5
        except ImportError:
            raise FacefleetError("the MQTT sink needs awscrt: pip install 'facefleet[device]'") from None
        self._mqtt5 = mqtt5
        tls_ctx = None
        if cert or key:
            if not (cert and key):
                raise FacefleetError("mTLS needs both a certificate and a private key")
            opts = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
            if ca:
                opts.override_default_trust_store_from_path(None, ca)
            tls_ctx = io.ClientTlsContext(opts)
        self.connected = threading.Event()
        self._topics: dict[str, object] = {}  # topic -> callback(payload: bytes): re-subscribed on each connection
        self._topics_lock = threading.Lock()
        self.ack_timeout_s = ack_timeout_s
        # The client's own deadline is the longest we ever wait: a slow PUBACK still confirms.
        self.inflight = InFlight(min_timeout_s=ack_timeout_s, max_timeout_s=max_ack_timeout_s)
        options = mqtt5.ClientOptions(
            host_name=host, port=port, tls_ctx=tls_ctx,
            connect_options=mqtt5.ConnectPacket(client_id=client_id or f"facefleet-{uuid.uuid4().hex[:12]}", keep_alive_interval_sec=30),
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            min_reconnect_delay_ms=200, max_reconnect_delay_ms=2000, ack_timeout_sec=max_ack_timeout_s,
            on_lifecycle_event_connection_success_fn=self._connected,
            on_publish_callback_fn=self._on_publish,
            on_lifecycle_event_disconnection_fn=lambda _d: self._set(False),
            on_lifecycle_event_connection_failure_fn=lambda _d: self._set(False),
        )
        self._client = mqtt5.Client(options)
        self._client.start()

    def _connected(self, _data) -> None:
        with self._topics_lock:
            topics = list(self._topics)
        for t in topics:  # a clean session forgets subscriptions: subscribe again
            self._subscribe(t)
        self._set(True)

    def _subscribe(self, topic: str):
        mqtt5 = self._mqtt5
        return self._client.subscribe(mqtt5.SubscribePacket(subscriptions=[
            mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)]))

    def subscribe(self, topic: str, on_message, timeout_s: float = 10.0) -> bool:
        """Messages on ``topic`` (exact name) to ``on_message(payload)``, on awscrt's thread: keep it short.

        Waits (at most ``timeout_s``) for the broker's SUBACK, so a caller that says "listening"
        is: True once the broker granted it. Otherwise the topic is subscribed on (re)connection."""
        with self._topics_lock:
            self._topics[topic] = on_message
        if not self.connected.wait(timeout_s):
            return False
        try:
            codes = self._subscribe(topic).result(timeout_s).reason_codes or []
        except Exception as e:  # dropped or timed out: the next connection subscribes it
            log.debug("subscribe %s: %s", topic, e)
            return False
        return bool(codes) and all(int(c) < 0x80 for c in codes)  # MQTT 5.0 3.9.3: >= 0x80 refuses

    def unsubscribe(self, topic: str) -> None:
        with self._topics_lock:
            self._topics.pop(topic, None)
        try:
            self._client.unsubscribe(self._mqtt5.UnsubscribePacket(topic_filters=[topic]))
        except Exception as e:  # not connected: the next connection does not subscribe it
            log.debug("unsubscribe %s: %s", topic, e)

    def _on_publish(self, data) -> None:
        packet = data.publish_packet
        with self._topics_lock:
            callback = self._topics.get(packet.topic)
        if callback is not None:
            try:
                callback(bytes(packet.payload or b""))
            except Exception as e:  # never into awscrt's thread
                log.warning("message on %s: %s", packet.topic, e)

    def _set(self, up: bool) -> None:
        if up != self.connected.is_set():
            log.info("MQTT %s", "connected" if up else "disconnected")
        (self.connected.set if up else self.connected.clear)()

    def send(self, items: list[SpoolItem]) -> list[bool]:
        """QoS 1 through the in-flight window (see inflight.py): nothing is published twice while
        its PUBACK may still come; the wait follows the measured round trip."""
        mqtt5 = self._mqtt5
        if not self.connected.wait(0.5):
            return [False] * len(items)
        by_seq = {it.seq: it for it in items}

        def publish(seq: int) -> Future | None:
            it = by_seq[seq]
            try:
                return self._client.publish(mqtt5.PublishPacket(topic=it.topic, payload=it.payload, qos=mqtt5.QoS.AT_LEAST_ONCE))
            except Exception as e:  # client shutting down
                log.debug("publish failed: %s", e)
                return None

        def confirmed(f: Future) -> bool:
            if f.exception() is not None:  # not cancelled: awscrt completes its futures itself
                return False
            r = f.result()
            code = r.puback.reason_code if r is not None and r.puback is not None else None
            return code is not None and code.value < 0x80  # awscrt: None for a code it does not know

        return self.inflight.deliver([it.seq for it in items], publish, confirmed)

    def close(self) -> None:
        self._client.stop()
