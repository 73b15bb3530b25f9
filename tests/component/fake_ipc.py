"""In-memory stand-in for ``GreengrassCoreIPCClientV2`` (test double; lives under tests/).

Same method names and keyword arguments as the SDK (reference/greengrass.md), the SDK's own
model classes for requests and events, and helpers that play the nucleus: push a configuration
change, a validation request, a component update, or a message on an IoT Core topic.
"""

from __future__ import annotations

import copy
import json
import threading

from awsiot.greengrasscoreipc import model


class FakeIpcClient:
    def __init__(self, configuration: dict):
        self._config = copy.deepcopy(configuration)
        self._lock = threading.Lock()
        self.handlers: dict[str, list] = {"validate": [], "config": [], "component": [], "iot": []}
        self.iot_topics: list[str] = []
        self.published: list[tuple[str, str, bytes]] = []  # (topic, qos, payload)
        self.local: list[tuple[str, dict]] = []
        self.reports: list[model.ConfigurationValidityReport] = []
        self.states: list[str] = []
        self.deferrals: list[tuple[str, str, int]] = []
        self.fail_publish = False

    # ---- SDK surface ---------------------------------------------------------------------------
    def get_configuration(self, *, component_name=None, key_path=None):
        value = self._config
        for k in key_path or []:
            value = value[k]
        return model.GetConfigurationResponse(component_name=component_name, value=copy.deepcopy(value))

    def subscribe_to_validate_configuration_updates(self, *, stream_handler=None, on_stream_event=None, on_stream_error=None,
                                                    on_stream_closed=None):
        self.handlers["validate"].append(on_stream_event)
        return model.SubscribeToValidateConfigurationUpdatesResponse(), None

    def subscribe_to_configuration_update(self, *, component_name=None, key_path=None, stream_handler=None, on_stream_event=None,
                                          on_stream_error=None, on_stream_closed=None):
        self.handlers["config"].append(on_stream_event)
        return model.SubscribeToConfigurationUpdateResponse(), None

    def subscribe_to_component_updates(self, *, stream_handler=None, on_stream_event=None, on_stream_error=None,
                                       on_stream_closed=None):
        self.handlers["component"].append(on_stream_event)
        return model.SubscribeToComponentUpdatesResponse(), None

    def subscribe_to_iot_core(self, *, topic_name=None, qos=None, stream_handler=None, on_stream_event=None, on_stream_error=None,
                              on_stream_closed=None):
        assert qos in (model.QOS.AT_MOST_ONCE, model.QOS.AT_LEAST_ONCE)
        self.iot_topics.append(topic_name)
        self.handlers["iot"].append(on_stream_event)
        return model.SubscribeToIoTCoreResponse(), None

    def send_configuration_validity_report(self, *, configuration_validity_report=None):
        assert configuration_validity_report.status in (model.ConfigurationValidityStatus.ACCEPTED,
                                                        model.ConfigurationValidityStatus.REJECTED)
        self.reports.append(configuration_validity_report)
        return model.SendConfigurationValidityReportResponse()

    def update_state(self, *, state=None):
        assert state in (model.ReportedLifecycleState.RUNNING, model.ReportedLifecycleState.ERRORED)
        self.states.append(state)
        return model.UpdateStateResponse()

    def defer_component_update(self, *, deployment_id=None, message=None, recheck_after_ms=None):
        self.deferrals.append((deployment_id, message, recheck_after_ms))
        return model.DeferComponentUpdateResponse()

    def publish_to_iot_core(self, *, topic_name=None, qos=None, payload=None, retain=None, user_properties=None,
                            message_expiry_interval_seconds=None, correlation_data=None, response_topic=None, payload_format=None,
                            content_type=None):
        if self.fail_publish:
            raise ConnectionError("nucleus unavailable")
        assert isinstance(payload, bytes | str)
        with self._lock:
            self.published.append((topic_name, qos, payload if isinstance(payload, bytes) else payload.encode()))
        return model.PublishToIoTCoreResponse()

    def publish_to_topic(self, *, topic=None, publish_message=None):
        assert publish_message.json_message is not None or publish_message.binary_message is not None
        with self._lock:
            self.local.append((topic, publish_message.json_message.message))
        return model.PublishToTopicResponse()

    # ---- the nucleus side -------------------------------------------------------------------
    def events(self, kind: str | None = None) -> list[dict]:
        with self._lock:
            out = [json.loads(p) for _, _, p in self.published]
        return [e for e in out if kind is None or e["type"] == kind]

    def push_validation(self, configuration, deployment_id: str = "dep-1") -> model.ConfigurationValidityReport:
        n = len(self.reports)
        ev = model.ValidateConfigurationUpdateEvents(validate_configuration_update_event=model.ValidateConfigurationUpdateEvent(
            configuration=copy.deepcopy(configuration), deployment_id=deployment_id))
        for h in self.handlers["validate"]:
            h(ev)
        assert len(self.reports) == n + 1, "the component sent no validity report"
        return self.reports[-1]

    def push_configuration(self, configuration: dict, key_path=("models",)) -> None:
        self._config = copy.deepcopy(configuration)
        ev = model.ConfigurationUpdateEvents(configuration_update_event=model.ConfigurationUpdateEvent(
            component_name="com.facefleet.FaceRecognition", key_path=list(key_path)))
        for h in self.handlers["config"]:
            h(ev)

    def push_component_update(self, deployment_id: str = "dep-2") -> None:
        ev = model.ComponentUpdatePolicyEvents(pre_update_event=model.PreComponentUpdateEvent(deployment_id=deployment_id,
                                                                                              is_ggc_restarting=False))
        for h in self.handlers["component"]:
            h(ev)

    def push_iot_message(self, topic: str, payload: bytes | str) -> None:
        ev = model.IoTCoreMessage(message=model.MQTTMessage(topic_name=topic, payload=payload))
        for t, h in zip(self.iot_topics, self.handlers["iot"], strict=True):
            if t == topic:
                h(ev)
