"""Control planes: where the component's configuration and commands come from and where its
events go. One per environment, one file each; the ``Component`` is the same everywhere.

* ``greengrass.GreengrassPlane``: configuration and validation over Greengrass IPC, commands
  from IoT Core, events to IoT Core (and local pub/sub) over IPC, lifecycle state to the nucleus.
* ``local.LocalPlane``: ``facefleet run --config FILE``: configuration from the watched YAML
  file, commands from a local MQTT topic when ``mqtt`` is set, events to MQTT or JSONL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from facefleet.component.service import Component
    from facefleet.config import ComponentConfig
    from facefleet.transport.spool import Sink


class ControlPlane(Protocol):
    name: str
    control_plane: bool  # True on the class: how Component tells a plane from a bare IPC client

    def read_config(self) -> dict:
        """The configuration as given (a mapping); the component validates it."""
        ...

    def report_state(self, state: str) -> None:
        """RUNNING or ERRORED, where the environment wants to know."""
        ...

    def sink(self, cfg: ComponentConfig, thing: str) -> Sink:
        """Where spooled events go."""
        ...

    def start(self, comp: Component) -> None:
        """Start delivering configuration changes and commands to ``comp``."""
        ...

    def commands_changed(self, comp: Component, cfg: ComponentConfig) -> None:
        """The command topic changed: listen on the new one (raise FacefleetError to keep the old)."""
        ...

    def tap(self, event) -> None:
        """Every event as it is published (before the spool); most planes do nothing."""
        ...

    def close(self) -> None: ...
