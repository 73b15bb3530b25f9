"""The component process: configuration over IPC, validated hot model swap, commands, status.

Everything the outside world gives us (a proposed configuration, a command payload) is parsed
with the shared pydantic schema; a problem becomes a REJECTED report or an error event, and the
cameras keep running on the models they have.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from facefleet.archives import read_gallery_archive
from facefleet.component.cameras import CameraWorker
from facefleet.component.commands import Enroll, ListIds, Remove, command_of, decode_image, parse_command, request_id_of
from facefleet.component.models import ModelPaths, load_pair, model_paths
from facefleet.component.swap import hot_swap, one_line
from facefleet.config import CameraConfig, ComponentConfig, parse_component_config
from facefleet.errors import FacefleetError
from facefleet.events import CommandResultEvent, ErrorEvent, Models, StatusEvent
from facefleet.runtime import BackendPool

log = logging.getLogger(__name__)


class Component:
    """Wire IPC to the pipelines. ``ipc`` is a GreengrassCoreIPCClientV2 (or a test double with
    the same methods); ``sink`` overrides the IPC event sink (e.g. MQTT outside Greengrass)."""

    def __init__(self, ipc, work: str | Path, artifacts: str | Path | None = None, thing: str | None = None,
                 environ: dict | None = None, sink=None):
        self.ipc = ipc
        self.work = Path(work)
        self.artifacts = Path(artifacts) if artifacts else None
        self.environ = dict(os.environ if environ is None else environ)
        self.thing = thing or self.environ.get("AWS_IOT_THING_NAME") or "local"
        self._sink = sink
        self.infer_lock = threading.Lock()   # held per frame and for the model switch
        self._apply_lock = threading.Lock()  # one configuration change at a time
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self.cameras: dict[str, CameraWorker] = {}
        self.swaps = 0
        self.last_swap_ms: float | None = None
        self.backends = BackendPool()  # serving, validation and swaps share one device

    # ---- start / stop -------------------------------------------------------------------------
    def start(self) -> Component:
        from facefleet.recognition.gallery import Gallery
        from facefleet.recognition.loader import gallery_index
        from facefleet.transport.spool import Forwarder, Spool, SpooledPublisher

        try:
            self.cfg = self._read_config()
            self.spool = Spool(self._work_path(self.cfg.spool.path), self.cfg.spool.max_events)
            if self._sink is None:
                from facefleet.transport.ipc import IpcSink
                self._sink = IpcSink(self.ipc, self.thing, self.cfg.topics.local)
            self.forwarder = Forwarder(self.spool, self._sink, self.cfg.spool.batch).start()
            self.publisher = SpooledPublisher(self.spool, self.cfg.topics.events, self.thing)
            self.spool.on_change = self._spool_changed
            self.paths = model_paths(self.cfg, self.artifacts, self.environ)
            self.models = load_pair(self.cfg, self.paths, self.backends)
            self.gallery = Gallery.open(self._work_path(self.cfg.gallery), create=True)
            try:  # each archive merges all or nothing; a bad one must not keep the cameras down
                self._merge_archives(self.cfg.gallery_archives)
            except FacefleetError as e:
                self.error("gallery", one_line(e))
            self.index = gallery_index(self.gallery, self.models.recognizer)
        except Exception as e:
            log.error("cannot serve: %s", one_line(e))
            self._report_state("ERRORED")
            raise
        for cam in self.cfg.cameras:
            self._start_camera(cam)
        self._subscribe()
        self._report_state("RUNNING")
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()
        log.info("serving %d camera(s); detector %s, recognizer %s, gallery %d", len(self.cameras),
                 self.models.detector.spec.fingerprint, self.models.recognizer.fingerprint, len(self.index))
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in list(self.cameras.values()):
            w.stop()
        if hasattr(self, "forwarder"):
            self.forwarder.drain(5.0)
            self.forwarder.stop()
            self.spool.close()
        if hasattr(self, "models"):
            self.models.close()
        self.backends.close()

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    # ---- helpers --------------------------------------------------------------------------------
    def _work_path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.work / q

    def _read_config(self) -> ComponentConfig:
        raw = self.ipc.get_configuration(key_path=[]).value
        cfg = parse_component_config(raw, "(component configuration)")
        if "device" not in (raw or {}):
            cfg = cfg.model_copy(update={"device": self.thing})
        return cfg

    def _report_state(self, state: str) -> None:
        from awsiot.greengrasscoreipc.model import ReportedLifecycleState

        try:
            self.ipc.update_state(state=getattr(ReportedLifecycleState, state))
        except Exception as e:
            log.warning("update_state(%s) failed: %s", state, e)

    def _spool_changed(self, disk_error: str | None) -> None:
        """The spool's disk refused writes (or takes them again): say so in an error event."""
        if disk_error is not None:
            self.error("spool", f"event spool cannot write ({disk_error}); holding up to {self.spool.memory_max} "
                       "events in memory, the oldest are dropped and counted")
        else:
            log.info("event spool writable again")

    def publish(self, event) -> None:
        self.publisher.publish(event)

    def error(self, source: str, message: str) -> None:
        log.warning("%s: %s", source, message)
        self.publish(ErrorEvent(device=self.cfg.device, source=source, message=message))

    @contextmanager
    def busy(self):
        with self._busy_lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy -= 1

    @property
    def is_busy(self) -> bool:
        return self._busy > 0

    def _start_camera(self, cam: CameraConfig) -> None:
        from facefleet.recognition.pipeline import FacePipeline

        pipeline = FacePipeline(self.models.detector, self.models.recognizer, self.index, self.cfg, camera_id=cam.id)
        self.cameras[cam.id] = CameraWorker(cam, pipeline, self.infer_lock, self.publish, self.cfg.device).start()

    # ---- IPC subscriptions ----------------------------------------------------------------------
    def _subscribe(self) -> None:
        from awsiot.greengrasscoreipc.model import QOS

        self.ipc.subscribe_to_validate_configuration_updates(on_stream_event=self._guard(self.on_validate))
        self.ipc.subscribe_to_configuration_update(key_path=[], on_stream_event=self._guard(self.on_config_update))
        self.ipc.subscribe_to_component_updates(on_stream_event=self._guard(self.on_component_update))
        self.ipc.subscribe_to_iot_core(topic_name=self.cfg.topics.commands.replace("{thing}", self.thing),
                                       qos=QOS.AT_LEAST_ONCE, on_stream_event=self._guard(self.on_command))

    def _guard(self, fn):
        """IPC callbacks run on the SDK's thread pool: an exception there must not vanish silently."""
        def call(event):
            try:
                fn(event)
            except Exception as e:
                log.exception("handler %s failed", fn.__name__)
                self.error("component", f"{fn.__name__}: {one_line(e)}")
        return call

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, data) -> tuple[bool, str]:
        """Schema, model files (exist, sha256), load + self-test. Never touches the serving models."""
        try:
            cfg = parse_component_config(data, "(proposed)")
            paths = model_paths(cfg, self.artifacts, self.environ)
            for a in cfg.gallery_archives:  # read and check every entry, as the merge will
                read_gallery_archive(self._artifact_path(a))
            if paths != self.paths or cfg.models != self.cfg.models or cfg.detection != self.cfg.detection:
                load_pair(cfg, paths, self.backends).close()
        except Exception as e:
            return False, one_line(e)
        return True, "configuration accepted"

    def on_validate(self, event) -> None:
        from awsiot.greengrasscoreipc.model import ConfigurationValidityReport, ConfigurationValidityStatus

        ev = event.validate_configuration_update_event
        ok, message = self.validate(ev.configuration)
        log.info("proposed configuration for deployment %s: %s (%s)", ev.deployment_id, "ACCEPTED" if ok else "REJECTED", message)
        status = ConfigurationValidityStatus.ACCEPTED if ok else ConfigurationValidityStatus.REJECTED
        self.ipc.send_configuration_validity_report(configuration_validity_report=ConfigurationValidityReport(
            status=status, deployment_id=ev.deployment_id, message=message))

    # ---- live configuration -----------------------------------------------------------------------
    def on_config_update(self, event) -> None:
        log.info("configuration changed at %s", event.configuration_update_event.key_path)
        raw = self.ipc.get_configuration(key_path=[]).value
        self.apply(raw)

    def apply(self, raw) -> bool:
        """Apply a configuration live; on any failure keep serving as before and emit an error."""
        with self._apply_lock, self.busy():
            try:
                cfg = parse_component_config(raw, "(component configuration)")
                if "device" not in (raw or {}):
                    cfg = cfg.model_copy(update={"device": self.thing})
                paths = model_paths(cfg, self.artifacts, self.environ)
            except Exception as e:
                self.error("config", one_line(e))
                return False
            if paths != self.paths or cfg.models != self.cfg.models or cfg.detection != self.cfg.detection:
                if not self.swap(cfg, paths):
                    return False
            else:
                with self.infer_lock:
                    for w in self.cameras.values():
                        w.pipeline.cfg = cfg
                        w.pipeline.set_models(self.models.detector, self.models.recognizer, self.index)
            if cfg.gallery_archives != self.cfg.gallery_archives:
                try:
                    self._merge_archives(cfg.gallery_archives)
                    self._reindex()
                except Exception as e:
                    self.error("gallery", one_line(e))
            old_cfg, self.cfg = self.cfg, cfg
            self.spool.max_events = cfg.spool.max_events
            self.forwarder.batch = cfg.spool.batch
            self.publisher.topic_template = cfg.topics.events
            if hasattr(self._sink, "local_topic"):
                self._sink.local_topic = cfg.topics.local
            self._apply_cameras(old_cfg, cfg)
            return True

    def _artifact_path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() or self.artifacts is None else self.artifacts / p

    def _merge_archives(self, archives: list[str]) -> None:
        """Fleet enrollment: merge shipped gallery archives (idempotent: crops are content-addressed)."""
        for a in archives:
            added = self.gallery.merge_archive(self._artifact_path(a))
            log.info("gallery archive %s: %d new crop(s)", a, added)

    def _reindex(self) -> None:
        """Re-embed the gallery (new crops) with the serving recognizer; switch between frames."""
        from facefleet.recognition.loader import gallery_index

        index = gallery_index(self.gallery, self.models.recognizer)
        with self.infer_lock:
            self.index = index
            for w in self.cameras.values():
                w.pipeline.set_models(self.models.detector, self.models.recognizer, index)

    def _apply_cameras(self, old: ComponentConfig, new: ComponentConfig) -> None:
        """Unchanged cameras keep running; removed ones stop; new or changed ones start."""
        before = {c.id: c for c in old.cameras}
        after = {c.id: c for c in new.cameras}
        for cid, cam in before.items():
            if after.get(cid) != cam and cid in self.cameras:
                self.cameras.pop(cid).stop()
        for cid, cam in after.items():
            if cid not in self.cameras:
                self._start_camera(cam)

    def swap(self, cfg: ComponentConfig, paths: ModelPaths) -> bool:
        """Atomic hot swap (see swap.hot_swap). On failure the old models keep serving."""
        try:
            res = hot_swap(cfg, paths, self.gallery, [w.pipeline for w in self.cameras.values()], self.infer_lock, self.models,
                           self.backends)
        except Exception as e:
            self.error("model", f"model swap failed, keeping the serving models: {one_line(e)}")
            return False
        old = self.models
        self.models, self.index, self.paths = res.models, res.index, paths
        self.swaps += 1
        self.last_swap_ms = res.ms
        for ev in res.events:
            self.publish(ev)
        old.close()
        return True

    # ---- component updates ------------------------------------------------------------------------
    def on_component_update(self, event) -> None:
        pre = event.pre_update_event
        if pre is None:
            return
        if self.is_busy:
            log.info("deferring component update %s: a model swap or enrollment is running", pre.deployment_id)
            self.ipc.defer_component_update(deployment_id=pre.deployment_id, message="model swap or enrollment in progress",
                                            recheck_after_ms=5000)
        else:
            self.ipc.defer_component_update(deployment_id=pre.deployment_id, message="ready", recheck_after_ms=0)

    # ---- commands ---------------------------------------------------------------------------------
    def on_command(self, event) -> None:
        payload = event.message.payload
        limit = self.cfg.commands.max_image_bytes * 4 // 3 + 4096
        try:
            cmd = parse_command(payload, limit)
        except FacefleetError as e:
            self.error("command", str(e))
            rid = request_id_of(payload, limit)
            if rid is not None:  # the caller waits on its request_id: answer it
                self.publish(CommandResultEvent(device=self.cfg.device, command=command_of(payload, limit), request_id=rid,
                                                ok=False, message=one_line(e)))
            return
        try:
            message, ids = self.run_command(cmd)
        except Exception as e:
            self.error("command", f"{cmd.command}: {one_line(e)}")
            self.publish(CommandResultEvent(device=self.cfg.device, command=cmd.command, request_id=cmd.request_id, ok=False,
                                            message=one_line(e)))
            return
        self.publish(CommandResultEvent(device=self.cfg.device, command=cmd.command, request_id=cmd.request_id, ok=True,
                                        message=message, identities=ids))

    def run_command(self, cmd) -> tuple[str, list[str] | None]:
        from facefleet.recognition.gallery import validate_name
        from facefleet.recognition.loader import largest_face_crop, update_index

        if isinstance(cmd, ListIds):
            return f"{len(self.gallery.names())} identities", self.gallery.names()
        with self._apply_lock, self.busy():
            name = validate_name(cmd.name)
            if isinstance(cmd, Enroll):
                image = decode_image(cmd, self.cfg.commands.max_image_bytes, self.cfg.commands.max_image_pixels)
                # Its own Detector (own buffers) on the shared, thread-safe model: NOT under
                # infer_lock, so the cameras keep processing while an enroll detects.
                crop = largest_face_crop(self.models.detector.fork(), image)
                del image
                if crop is None:
                    raise FacefleetError("no face found in the enroll image")
                self.gallery.add(name, [crop], ["command"])
                message = f"{name} enrolled"
            else:
                assert isinstance(cmd, Remove)
                if name not in self.gallery:
                    raise FacefleetError(f"no identity {name!r} in the gallery")
                self.gallery.remove(name)
                message = f"{name} removed"
            index = update_index(self.gallery, self.index, [name], self.models.recognizer)  # only this identity
            with self.infer_lock:
                for w in self.cameras.values():
                    w.pipeline.set_models(self.models.detector, self.models.recognizer, index)
                self.index = index
        return message, None

    # ---- status -------------------------------------------------------------------------------------
    def status(self, last: dict[str, tuple[int, float]]) -> StatusEvent:
        now = time.monotonic()
        fps, stage_ms = {}, {}
        for cid, w in list(self.cameras.items()):
            f0, t0 = last.get(cid, (0, now))
            fps[cid] = round((w.frames - f0) / (now - t0), 2) if now > t0 else 0.0
            last[cid] = (w.frames, now)
            for k, v in w.pipeline.clock.mean_ms().items():
                stage_ms[f"{cid}.{k}"] = round(v, 3)
        return StatusEvent(device=self.cfg.device, fps=fps, stage_ms=stage_ms,
                           models=Models(detector=self.models.detector.spec.fingerprint, recognizer=self.models.recognizer.fingerprint),
                           gallery_identities=len(self.index), spool_depth=self.spool.depth, dropped=self.spool.dropped,
                           spool_error=self.spool.disk_error, held_in_memory=self.spool.held_in_memory)

    def _status_loop(self) -> None:
        last: dict[str, tuple[int, float]] = {}
        self.status(last)
        while not self._stop.wait(self.cfg.status_interval_s):
            try:
                self.publish(self.status(last))
            except Exception as e:
                log.warning("status: %s", e)
