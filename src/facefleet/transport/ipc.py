"""Greengrass IPC sink: ``publish_to_iot_core`` (QoS 1) plus a local ``publish_to_topic`` copy.

The client is injected (``GreengrassCoreIPCClientV2`` on the device, an in-memory double in the
tests). An item is confirmed when the IoT Core publish call returned: the nucleus has it.
"""

from __future__ import annotations

import json
import logging

from facefleet.transport.spool import SpoolItem, event_topic

log = logging.getLogger(__name__)


class IpcSink:
    def __init__(self, client, thing: str, local_topic: str | None = None):
        from awsiot.greengrasscoreipc.model import QOS, JsonMessage, PublishMessage

        self._qos, self._json, self._msg = QOS.AT_LEAST_ONCE, JsonMessage, PublishMessage
        self.client, self.thing, self.local_topic = client, thing, local_topic

    def send(self, items: list[SpoolItem]) -> list[bool]:
        ok = []
        for it in items:
            try:
                self.client.publish_to_iot_core(topic_name=it.topic, qos=self._qos, payload=it.payload)
            except Exception as e:
                log.debug("publish_to_iot_core failed: %s", e)
                ok.append(False)
                continue
            ok.append(True)
            if self.local_topic:
                try:
                    self.client.publish_to_topic(topic=event_topic(self.local_topic, self.thing, it.kind),
                                                 publish_message=self._msg(json_message=self._json(message=json.loads(it.payload))))
                except Exception as e:  # the local copy is best effort; IoT Core is the record
                    log.warning("local publish_to_topic failed: %s", e)
        return ok

    def close(self) -> None:
        pass
