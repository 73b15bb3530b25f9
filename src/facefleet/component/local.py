"""Local mode: ``facefleet run --config FILE.yaml`` outside Greengrass. The file is watched and
a change goes through the same validated hot swap as a Greengrass configuration update."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from facefleet.component.models import model_paths
from facefleet.component.swap import FileWatcher, hot_swap
from facefleet.config import ComponentConfig
from facefleet.events import ErrorEvent
from facefleet.runtime import BackendPool

log = logging.getLogger(__name__)


class LocalSwapper:
    """Holds the serving models of one pipeline and applies changed configurations to it."""

    def __init__(self, pipeline, gallery, cfg: ComponentConfig, publish: Callable, backends: BackendPool,
                 detector: str | None = None,
                 recognizer: str | None = None):
        from facefleet.recognition.loader import ModelPair

        self.pipeline, self.gallery, self.cfg, self.publish = pipeline, gallery, cfg, publish
        self.backends = backends
        self.overrides = (detector, recognizer)  # --detector/--recognizer win over the file
        self.lock = threading.Lock()
        self.models = ModelPair(pipeline.detector, pipeline.recognizer)
        self.paths = self._paths(cfg)

    def _paths(self, cfg: ComponentConfig):
        p = model_paths(cfg, None)
        det, rec = self.overrides
        return replace(p, detector=Path(det) if det else p.detector, recognizer=Path(rec) if rec else p.recognizer)

    def apply(self, cfg: ComponentConfig) -> None:
        cfg = cfg.model_copy(update={"device": self.cfg.device, "camera_id": self.pipeline.camera_id})
        paths = self._paths(cfg)
        if paths == self.paths and cfg.models == self.cfg.models and cfg.detection == self.cfg.detection:
            with self.lock:
                self.pipeline.cfg = cfg
                self.pipeline.set_models(self.pipeline.detector, self.pipeline.recognizer, self.pipeline.index)
            self.cfg = cfg
            log.info("configuration reloaded (models unchanged)")
            return
        try:
            res = hot_swap(cfg, paths, self.gallery, [self.pipeline], self.lock, self.models, self.backends)
        except Exception as e:
            raise RuntimeError(f"model swap failed, keeping the serving models: {e}") from None
        old, self.models, self.paths, self.cfg = self.models, res.models, paths, cfg
        for ev in res.events:
            self.publish(ev)
        old.close()


def run_watched(args, cfg: ComponentConfig, pipeline, source, publish: Callable, backends: BackendPool) -> int:
    """Like ``run_source``, with the configuration file watched. Returns the number of events."""
    from facefleet.recognition.gallery import Gallery

    plock = threading.Lock()
    count = [0]
    mqtt = _MqttOut(cfg, Path(args.config).parent) if cfg.mqtt is not None else None

    def safe_publish(ev) -> None:
        with plock:
            publish(ev)
            if mqtt is not None:
                mqtt.publisher.publish(ev)
            count[0] += 1

    def on_error(message: str) -> None:
        log.warning("configuration %s: %s", args.config, message)
        safe_publish(ErrorEvent(device=cfg.device, source="config", message=message))

    swapper = LocalSwapper(pipeline, Gallery.open(args.gallery), cfg, safe_publish, backends, args.detector, args.recognizer)
    watcher = FileWatcher(args.config, swapper.apply, on_error).start()
    try:
        for frame in source:
            with swapper.lock:
                events = pipeline.process(frame)
            for ev in events:
                safe_publish(ev)
    finally:
        watcher.stop()
        with swapper.lock:
            events = pipeline.flush()
        for ev in events:
            safe_publish(ev)
        source.close()
        if mqtt is not None:
            mqtt.close()
    return count[0]


class _MqttOut:
    """Events to an MQTT broker through the durable spool (relative spool path: beside the file)."""

    def __init__(self, cfg: ComponentConfig, base: Path, drain_s: float = 10.0):
        from facefleet.transport.mqtt import MqttSink
        from facefleet.transport.spool import Forwarder, Spool, SpooledPublisher

        m = cfg.mqtt
        spool_path = Path(cfg.spool.path) if Path(cfg.spool.path).is_absolute() else base / cfg.spool.path
        self.spool = Spool(spool_path, cfg.spool.max_events)
        self.spool.on_change = lambda err: log.error("event spool: %s", err) if err else log.info("event spool writable again")
        self.sink = MqttSink(m.host, m.port, m.client_id, m.cert, m.key, m.ca)
        self.forwarder = Forwarder(self.spool, self.sink, cfg.spool.batch).start()
        self.publisher = SpooledPublisher(self.spool, cfg.topics.events, cfg.device)
        self.drain_s = drain_s

    def close(self) -> None:
        if not self.forwarder.drain(self.drain_s):
            log.warning("%d event(s) stay in the spool %s; they are sent on the next run", self.spool.depth, self.spool.path)
        self.forwarder.stop()
        self.sink.close()
        self.spool.close()
