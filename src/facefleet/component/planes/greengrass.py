"""The Greengrass control plane: configuration over IPC (with the nucleus's validation step),
commands from IoT Core, events over IPC, lifecycle state and deferred component updates."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from facefleet.component.subscriptions import Subscriptions, describe
from facefleet.errors import FacefleetError

if TYPE_CHECKING:
    from facefleet.component.service import Component
    from facefleet.config import ComponentConfig

log = logging.getLogger(__name__)


class GreengrassPlane:
    name = "greengrass"
    control_plane = True  # a Component takes it as its plane (anything else is an IPC client)

    def __init__(self, ipc):
        self.ipc = ipc  # GreengrassCoreIPCClientV2 (or a double with the same methods)
        self.subscriptions: Subscriptions | None = None
        self._comp: Component | None = None

    # ---- configuration, state, events ---------------------------------------------------------
    def read_config(self) -> dict:
        try:
            return self.ipc.get_configuration(key_path=[]).value
        except Exception as e:
            raise FacefleetError(describe("GetConfiguration", e)) from None

    def report_state(self, state: str) -> None:
        from awsiot.greengrasscoreipc.model import ReportedLifecycleState

        try:
            self.ipc.update_state(state=getattr(ReportedLifecycleState, state))
        except Exception as e:
            log.warning("%s", describe(f"UpdateState {state}", e))

    def sink(self, cfg: ComponentConfig, thing: str):
        from facefleet.transport.ipc import IpcSink

        return IpcSink(self.ipc, thing, cfg.topics.local)

    def tap(self, event) -> None:
        pass

    # ---- subscriptions --------------------------------------------------------------------------
    def start(self, comp: Component) -> None:
        self._comp = comp
        if self.subscriptions is None:
            self.subscriptions = Subscriptions(comp.stream_lost, comp.stopping)
        subs = self.subscriptions
        subs.open("validate", "SubscribeToValidateConfigurationUpdates", self.ipc.subscribe_to_validate_configuration_updates,
                  comp.guard(self.on_validate))
        subs.open("config", "SubscribeToConfigurationUpdate",
                  lambda **h: self.ipc.subscribe_to_configuration_update(key_path=[], **h), comp.guard(self.on_config_update))
        subs.open("component", "SubscribeToComponentUpdates", self.ipc.subscribe_to_component_updates,
                  comp.guard(self.on_component_update))
        self.commands_changed(comp, comp.cfg)
        self._follow_jobs(comp)

    def _follow_jobs(self, comp: Component) -> None:
        """IoT jobs reach devices that were offline when they were made (gallery erase); without them
        the command topic still works, so a refusal is an error event, not a failed start."""
        from facefleet.component.jobs import DeviceJobs

        try:
            comp.jobs = DeviceJobs(self.ipc, comp.thing, comp.run_job, comp.stopping).start(self.subscriptions, comp.guard)
        except Exception as e:
            comp.error("jobs", f"IoT jobs not followed (gallery erase reaches this device only on the command topic): "
                       f"{describe('jobs', e)}")

    def commands_changed(self, comp: Component, cfg: ComponentConfig) -> None:
        """(Re-)subscribe the command topic: the new stream is opened before the old one closes."""
        from awsiot.greengrasscoreipc.model import QOS

        topic = comp.commands_topic(cfg)
        self.subscriptions.open("commands", f"SubscribeToIoTCore {topic}",
                                lambda **h: self.ipc.subscribe_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, **h),
                                comp.guard(self.on_command))
        log.info("commands on %s", topic)

    def on_validate(self, event) -> None:
        from awsiot.greengrasscoreipc.model import ConfigurationValidityReport, ConfigurationValidityStatus

        ev = event.validate_configuration_update_event
        ok, message = self._comp.validate(ev.configuration)
        log.info("proposed configuration for deployment %s: %s (%s)", ev.deployment_id, "ACCEPTED" if ok else "REJECTED", message)
        status = ConfigurationValidityStatus.ACCEPTED if ok else ConfigurationValidityStatus.REJECTED
        self.ipc.send_configuration_validity_report(configuration_validity_report=ConfigurationValidityReport(
            status=status, deployment_id=ev.deployment_id, message=message))

    def on_config_update(self, event) -> None:
        log.info("configuration changed at %s", event.configuration_update_event.key_path)
        self._comp.apply(self.read_config())

    def on_component_update(self, event) -> None:
        pre = event.pre_update_event
        if pre is None:
            return
        if self._comp.is_busy:
            log.info("deferring component update %s: a model swap or enrollment is running", pre.deployment_id)
            self.ipc.defer_component_update(deployment_id=pre.deployment_id, message="model swap or enrollment in progress",
                                            recheck_after_ms=5000)
        else:
            self.ipc.defer_component_update(deployment_id=pre.deployment_id, message="ready", recheck_after_ms=0)

    def on_command(self, event) -> None:
        self._comp.on_command(event.message.payload)

    def close(self) -> None:
        if self.subscriptions is not None:
            self.subscriptions.close_all()
