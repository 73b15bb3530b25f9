"""Greengrass IPC sink: ``publish_to_iot_core`` (QoS 1) plus a local ``publish_to_topic`` copy.

The client is injected (``GreengrassCoreIPCClientV2`` on the device; the tests run the real
client against a wire-level nucleus stand-in). An item is confirmed when the IoT Core publish
call returned, i.e. the nucleus accepted it into ITS spooler (in memory by default: a nucleus
restart before the cloud acknowledged it loses it; docs/greengrass.md says how to configure the
disk spooler). What the nucleus refuses stays in our spool:
- "Message spool is full" (its spooler REJECTS new QoS 1 messages when full) or any other
  failure: retried later, in order (we stop at the first refusal of a round);
- a payload over its ``maxMessageSizeInBytes`` (128 KiB, IoT Core's own limit) or an invalid
  request: can never succeed, so it is ``Rejected`` and set aside by the forwarder.
"""

from __future__ import annotations

import json
import logging

from facefleet.config import IOT_CORE_MAX_PAYLOAD
from facefleet.transport.spool import Rejected, SpoolItem, event_topic

log = logging.getLogger(__name__)


def _error_text(e: BaseException) -> str:
    message = getattr(e, "message", None) or str(e)
    return f"{type(e).__name__}: {message}"


def _permanent(e: BaseException) -> bool:
    """Errors no retry can fix: over the size limit (MqttClient.isValidPublishRequest) or a
    request the nucleus calls invalid (InvalidArgumentsError)."""
    name = type(e).__name__
    message = str(getattr(e, "message", None) or "")
    return name == "InvalidArgumentsError" or (name == "ServiceError" and "exceeds the configured limit" in message)


class IpcSink:
    max_payload = IOT_CORE_MAX_PAYLOAD  # the forwarder sets larger events aside without trying

    def __init__(self, client, thing: str, local_topic: str | None = None):
        from awsiot.greengrasscoreipc.model import QOS, JsonMessage, PublishMessage

        self._qos, self._json, self._msg = QOS.AT_LEAST_ONCE, JsonMessage, PublishMessage
        self.client, self.thing, self.local_topic = client, thing, local_topic
        self.last_error: str | None = None
        self.last_local_error: str | None = None

    def send(self, items: list[SpoolItem]) -> list[bool | Rejected]:
        out: list[bool | Rejected] = []
        for i, it in enumerate(items):
            try:
                self.client.publish_to_iot_core(topic_name=it.topic, qos=self._qos, payload=it.payload)
            except Exception as e:
                text = _error_text(e)
                if _permanent(e):
                    out.append(Rejected(text))
                    continue
                if text != self.last_error:
                    log.warning("publish_to_iot_core: %s (kept in the spool, retried)", text)
                self.last_error = text
                return out + [False] * (len(items) - i)  # keep the order: the rest waits for the retry
            self.last_error = None
            out.append(True)
            if self.local_topic:
                try:
                    self.client.publish_to_topic(topic=event_topic(self.local_topic, self.thing, it.kind),
                                                 publish_message=self._msg(json_message=self._json(message=json.loads(it.payload))))
                except Exception as e:  # the local copy is best effort; IoT Core is the record
                    if _error_text(e) != self.last_local_error:
                        log.warning("local publish_to_topic: %s", _error_text(e))
                    self.last_local_error = _error_text(e)
        return out

    def close(self) -> None:
        pass
