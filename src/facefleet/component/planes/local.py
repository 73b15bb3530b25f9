"""The local control plane: ``facefleet run --config FILE.yaml`` outside Greengrass.

Configuration comes from the YAML file, watched: a change goes through the component's own
``apply`` (validated hot swap, cameras added/removed), exactly as a Greengrass configuration
update. With an ``mqtt`` broker configured, commands come from the command topic on that broker
and events go to it through the spool (and to ``--events`` as JSONL as they happen); without
one, the spool forwards events to ``--events`` (JSONL). Command-line overrides (``--source`` as
one more camera, ``--gallery``, ``--detector``, ``--recognizer``) apply on every read of the file.
"""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from facefleet.errors import FacefleetError

if TYPE_CHECKING:
    from facefleet.component.service import Component
    from facefleet.config import ComponentConfig

log = logging.getLogger(__name__)


class JsonlSpoolSink:
    """Spooled events to a JSONL file or stdout (the spool's ``Sink``): one line per event."""

    def __init__(self, jsonl):
        self.jsonl = jsonl  # transport.jsonl.JsonlSink

    def send(self, items) -> list[bool]:
        out = []
        for it in items:
            try:
                self.jsonl.write_line(it.payload)
                out.append(True)
            except FacefleetError as e:  # full disk: kept in the spool, retried
                log.warning("%s", e)
                out.append(False)
        return out

    def close(self) -> None:
        pass


class LocalPlane:
    name = "local"
    control_plane = True  # a Component takes it as its plane (anything else is an IPC client)

    def __init__(self, config: str | Path, events: str = "-", source: str | None = None, gallery: str | None = None,
                 detector: str | None = None, recognizer: str | None = None, watch_interval_s: float = 1.0):
        from facefleet.transport.jsonl import JsonlSink

        self.path = Path(config)
        if source is not None and "://" not in source and not source.isdigit() and not source.startswith("/dev/video") \
                and not Path(source).exists():
            raise FacefleetError(f"source not found: {source}")  # a camera would retry a missing file forever
        self.source, self.gallery, self.detector, self.recognizer = source, gallery, detector, recognizer
        self.watch_interval_s = watch_interval_s
        self.jsonl = JsonlSink(events)
        self._mqtt = None
        self._watcher = None
        self._topic: str | None = None
        self._commands = ThreadPoolExecutor(1, thread_name_prefix="commands")  # one command at a time, off MQTT's thread
        self._lock = threading.Lock()

    # ---- configuration ----------------------------------------------------------------------------
    def load(self, path: Path | None = None) -> dict:
        """The file (strict: an unknown key in a file you wrote is an error) with the overrides."""
        from facefleet.config import ComponentConfig, parse_config
        from facefleet.yamlsafe import load_yaml_file

        path = path or self.path
        if not path.is_file():
            raise FacefleetError(f"configuration file not found: {path}")
        raw = load_yaml_file(path)
        raw = copy.deepcopy(raw) if raw is not None else {}
        if not isinstance(raw, dict):
            raise FacefleetError(f"invalid configuration {path}: expected a mapping at the top level")
        if self.detector or self.recognizer:
            models = raw.setdefault("models", {})
            if isinstance(models, dict):
                models.update({k: v for k, v in (("detector", self.detector), ("recognizer", self.recognizer)) if v})
        if self.gallery:
            raw["gallery"] = str(Path(self.gallery).resolve())
        if self.source is not None:
            cams = raw.setdefault("cameras", [])
            if isinstance(cams, list):
                cams.append({"id": raw.get("camera_id", "cam0"), "source": self.source, "detect_fps": None})
        parse_config(raw, str(path), ComponentConfig)
        return raw

    def read_config(self) -> dict:
        return self.load()

    @property
    def thing(self) -> str:
        from facefleet.config import ComponentConfig

        return ComponentConfig.model_validate(self.load()).device

    def report_state(self, state: str) -> None:
        log.log(logging.ERROR if state == "ERRORED" else logging.INFO, "component %s", state)

    # ---- events -------------------------------------------------------------------------------------
    def sink(self, cfg: ComponentConfig, thing: str):
        if cfg.mqtt is None:
            return JsonlSpoolSink(self.jsonl)
        from facefleet.transport.mqtt import MqttSink

        m = cfg.mqtt
        self._mqtt = MqttSink(m.host, m.port, m.client_id, m.cert, m.key, m.ca)
        return self._mqtt

    def tap(self, event) -> None:
        if self._mqtt is not None:  # events go to the broker through the spool; a JSONL copy now
            self.jsonl.publish(event)

    # ---- watching, commands -----------------------------------------------------------------------------
    def start(self, comp: Component) -> None:
        from facefleet.component.swap import FileWatcher

        def on_error(message: str) -> None:
            comp.error("config", f"{self.path}: {message}")

        self._watcher = FileWatcher(self.path, comp.apply, on_error, interval_s=self.watch_interval_s, load=self.load).start()
        if self._mqtt is not None:
            self.commands_changed(comp, comp.cfg)

    def commands_changed(self, comp: Component, cfg: ComponentConfig) -> None:
        if self._mqtt is None:
            return
        topic = comp.commands_topic(cfg)
        run = comp.guard(comp.on_command)
        with self._lock:
            old, self._topic = self._topic, topic
        granted = self._mqtt.subscribe(topic, lambda payload: self._commands.submit(run, payload))
        if old is not None and old != topic:
            self._mqtt.unsubscribe(old)
        if granted:
            log.info("commands on %s (MQTT %s:%d)", topic, cfg.mqtt.host, cfg.mqtt.port)
        else:
            log.warning("commands on %s: the broker %s:%d has not granted the subscription yet (it is made again on "
                        "every connection)", topic, cfg.mqtt.host, cfg.mqtt.port)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self._commands.shutdown(wait=True, cancel_futures=True)

    def close_events(self) -> None:
        """After the component stopped (its spool drained into the sink)."""
        self.jsonl.close()
