"""The component process: configuration over IPC, validated hot model swap, commands, status.

Everything the outside world gives us (a proposed configuration, a command payload) is parsed
with the shared pydantic schema; a problem becomes a REJECTED report or an error event, and the
cameras keep running on the models they have.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from facefleet.archives import read_gallery_archive
from facefleet.component.cameras import CameraWorker
from facefleet.component.commands import Enroll, ListIds, Remove, command_of, decode_image, parse_command, request_id_of
from facefleet.component.devices import DeviceCheck
from facefleet.component.erasure import ErasedNames
from facefleet.component.fleetcmds import FLEET_COMMANDS, run_fleet_command
from facefleet.component.models import ModelPaths, load_pair, model_paths
from facefleet.component.serving import Serving, ServingSlot
from facefleet.component.swap import hot_swap, one_line
from facefleet.config import IOT_CORE_MAX_PAYLOAD, CameraConfig, ComponentConfig, parse_component_config
from facefleet.errors import FacefleetError
from facefleet.events import CommandResultEvent, ErrorEvent, Models, StatusEvent
from facefleet.runtime import BackendPool

log = logging.getLogger(__name__)

LIST_REPLY_BUDGET = IOT_CORE_MAX_PAYLOAD - 8192  # room for the rest of the command_result event


def names_that_fit(names: list[str], budget: int) -> list[str]:
    """The leading names whose JSON fits ``budget`` bytes: a reply IoT Core cannot carry would
    only be set aside, so a long list is cut (and says so) instead."""
    out, size = [], 0
    for n in names:
        size += len(json.dumps(n)) + 2
        if size > budget:
            break
        out.append(n)
    return out


class Component:
    """One component, whatever runs it: ``plane`` is the control plane (planes/greengrass.py over
    IPC, planes/local.py for ``facefleet run --config``). A GreengrassCoreIPCClientV2 (or a
    double with its methods) given as ``plane`` is wrapped in the Greengrass plane. ``sink``
    overrides the plane's event sink; ``opener`` how a camera is opened (benchmarks)."""

    def __init__(self, plane, work: str | Path, artifacts: str | Path | None = None, thing: str | None = None,
                 environ: dict | None = None, sink=None, devices: DeviceCheck | None = None, opener=None):
        from facefleet.component.cameras import open_reader
        from facefleet.component.planes.greengrass import GreengrassPlane

        self.plane = plane if getattr(type(plane), "control_plane", False) else GreengrassPlane(plane)
        self.work = Path(work)
        self.artifacts = Path(artifacts) if artifacts else None
        self.environ = dict(os.environ if environ is None else environ)
        self.thing = thing or self.environ.get("AWS_IOT_THING_NAME") or "local"
        self._sink = sink
        self._opener = opener or open_reader
        self._apply_lock = threading.Lock()  # one configuration change at a time
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = False
        self.cameras: dict[str, CameraWorker] = {}
        self.slot: ServingSlot | None = None
        self.strangers = None  # recognition.strangers.StrangerBook shared by the cameras' pipelines
        self.swaps = 0
        self.last_swap_ms: float | None = None
        self.backends = BackendPool()  # serving, validation and swaps share one device
        self.devices = devices or DeviceCheck()

    @property
    def ipc(self):
        return getattr(self.plane, "ipc", None)

    @property
    def subscriptions(self):
        return getattr(self.plane, "subscriptions", None)

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    @property
    def models(self):
        """The model pair served now (each camera takes it once per frame)."""
        return self.slot.current.models

    @property
    def index(self):
        return self.slot.current.index

    # ---- start / stop -------------------------------------------------------------------------
    def start(self) -> Component:
        from facefleet.recognition.gallery import Gallery
        from facefleet.recognition.loader import gallery_index
        from facefleet.transport.spool import Forwarder, Spool, SpooledPublisher

        try:
            self.cfg = self._read_config()
            self.devices.require(self.cfg)
            self.spool = Spool(self._work_path(self.cfg.spool.path), self.cfg.spool.max_events)
            if self._sink is None:
                self._sink = self.plane.sink(self.cfg, self.thing)
            self.forwarder = Forwarder(self.spool, self._sink, self.cfg.spool.batch).start()
            self.publisher = SpooledPublisher(self.spool, self.cfg.topics.events, self.thing)
            self.spool.on_change = self._spool_changed
            self.paths = model_paths(self.cfg, self.artifacts, self.environ)
            models = load_pair(self.cfg, self.paths, self.backends)
            self.slot = ServingSlot(Serving(models, None, self.cfg))
            self.gallery = Gallery.open(self._work_path(self.cfg.gallery), create=True)
            self.erased = ErasedNames(self._work_path("erased_names.json"))  # fleet erase: never merged again
            try:  # each archive merges all or nothing; a bad one must not keep the cameras down
                self._merge_archives(self.cfg.gallery_archives)
            except FacefleetError as e:
                self.error("gallery", one_line(e))
            self.slot.publish(index=gallery_index(self.gallery, models.recognizer))
            for cam in self.cfg.cameras:
                self._start_camera(cam)
            self.plane.start(self)
        except Exception as e:
            # ANY start-up failure: one line naming the cause (and the fix where we know it),
            # ERRORED to the nucleus, everything started so far stopped; no traceback.
            message = one_line(e)
            log.error("cannot serve: %s", message)
            if getattr(self, "publisher", None) is not None:  # the cause as an error event too (spooled; issue 15.1: the canary's figure)
                self.error("start", f"cannot serve: {message}")
            self.plane.report_state("ERRORED")
            self.stop(drain=False)
            raise FacefleetError(message) from None
        self.plane.report_state("RUNNING")
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()
        log.info("serving %d camera(s) over %s; detector %s, recognizer %s, gallery %d identities", len(self.cameras),
                 self.plane.name, self.models.detector.spec.fingerprint, self.models.recognizer.fingerprint, len(self.index))
        return self

    def stop(self, drain: bool = True, drain_s: float = 5.0) -> None:
        """Idempotent: a start that failed has stopped already."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.plane.close()
        for w in list(self.cameras.values()):
            w.stop()
        if hasattr(self, "forwarder"):
            if drain and not self.forwarder.drain(drain_s):
                log.warning("%d event(s) stay in the spool %s; they are sent on the next start", self.spool.depth,
                            self.spool.path)
            self.forwarder.stop()
            self._sink.close()
            self.spool.close()
        if self.slot is not None:
            self.slot.close()
        self.backends.close()

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self, until=None) -> None:
        """Until stopped (or ``until()`` is true, checked every 0.2 s)."""
        while not self._stop.wait(0.2 if until else 1.0):
            if until is not None and until():
                return

    # ---- helpers --------------------------------------------------------------------------------
    def _work_path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.work / q

    def _read_config(self) -> ComponentConfig:
        raw = self.plane.read_config()
        cfg = parse_component_config(raw, "(component configuration)")
        if "device" not in (raw or {}):
            cfg = cfg.model_copy(update={"device": self.thing})
        if cfg.commands.max_image_bytes > cfg.commands.effective_max_image_bytes:
            log.warning("commands.max_image_bytes %d: enroll images are limited to %d bytes (IoT Core carries 128 KiB "
                        "payloads, the image in base64)", cfg.commands.max_image_bytes, cfg.commands.effective_max_image_bytes)
        return cfg

    def _spool_changed(self, disk_error: str | None) -> None:
        """The spool's disk refused writes (or takes them again): say so in an error event."""
        if disk_error is not None:
            self.error("spool", f"event spool cannot write ({disk_error}); holding up to {self.spool.memory_max} "
                       "events in memory, the oldest are dropped and counted")
        else:
            log.info("event spool writable again")

    def publish(self, event) -> None:
        self.plane.tap(event)
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
        if self.strangers is None:
            from facefleet.recognition.strangers import StrangerBook

            self.strangers = StrangerBook(self.cfg.unknowns, 1.0)  # shared (it locks); threshold set per model
        self.cameras[cam.id] = CameraWorker(cam, self.slot, self.publish, self.cfg.device, opener=self._opener,
                                            strangers=self.strangers).start()

    # ---- fleet jobs (gallery erase): component/jobs.py; the Greengrass plane subscribes -------------
    def run_job(self, document: dict) -> str:
        """A job document is a command (only the fleet commands); its result is also an event."""
        cmd = parse_command(document, IOT_CORE_MAX_PAYLOAD)
        if not isinstance(cmd, FLEET_COMMANDS):
            raise FacefleetError(f"command {cmd.command!r} cannot come as an IoT job")
        message, extra = run_fleet_command(self, cmd)
        self.publish(CommandResultEvent(device=self.cfg.device, command=cmd.command, request_id=cmd.request_id, ok=True,
                                        message=message, **extra))
        return message

    @property
    def finished(self) -> bool:
        """Every camera read a finite source to its end (local runs on files end then)."""
        return bool(self.cameras) and all(w.finished.is_set() for w in self.cameras.values())

    # ---- control-plane callbacks ------------------------------------------------------------------
    def commands_topic(self, cfg: ComponentConfig) -> str:
        return cfg.topics.commands.replace("{thing}", self.thing)

    def stream_lost(self, name: str, message: str) -> None:
        self.error("ipc", f"{name}: {message}")

    def guard(self, fn):
        """Control-plane callbacks run on a client's threads: an exception there must not vanish."""
        def call(event):
            try:
                fn(event)
            except Exception as e:
                log.debug("handler %s failed", fn.__name__, exc_info=True)
                self.error("component", f"{fn.__name__}: {one_line(e)}")
        return call

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, data) -> tuple[bool, str]:
        """Schema, model files (exist, sha256), load + self-test. Never touches the serving models."""
        ignored: list[str] = []
        try:
            cfg = parse_component_config(data, "(proposed)", ignored)
            self.devices.require(cfg)  # a camera or Hailo device ggc_user cannot open: rejected with the fix
            paths = model_paths(cfg, self.artifacts, self.environ)
            for a in cfg.gallery_archives:
                # a name already in force may be gone (another version's artifacts folder): its crops
                # were merged already, so only a newly named archive must exist -- and is read and
                # checked entry by entry, as the merge will, before the deployment is ACCEPTED
                if a not in self.cfg.gallery_archives:
                    read_gallery_archive(self._artifact_path(a))
            if paths != self.paths or cfg.models != self.cfg.models or cfg.detection != self.cfg.detection:
                load_pair(cfg, paths, self.backends).close()
        except Exception as e:
            return False, one_line(e)
        if ignored:
            return True, f"configuration accepted; unknown keys ignored: {', '.join(ignored)}"
        return True, "configuration accepted"

    # ---- live configuration -----------------------------------------------------------------------
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
            else:  # each camera takes the new configuration between two of its frames
                self.slot.publish(cfg=cfg)
            if self.commands_topic(cfg) != self.commands_topic(self.cfg):
                try:
                    self.plane.commands_changed(self, cfg)
                except FacefleetError as e:  # the old subscription stays open
                    self.error(self.plane.name, f"command topic not changed: {e}")
                    cfg = cfg.model_copy(update={"topics": cfg.topics.model_copy(update={"commands": self.cfg.topics.commands})})
            if cfg.gallery_archives != self.cfg.gallery_archives:
                try:
                    if self._merge_archives(cfg.gallery_archives):
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

    def _merge_archives(self, archives: list[str]) -> int:
        """Fleet enrollment: merge shipped gallery archives (idempotent: crops are content-addressed).
        A named archive whose file is gone never stops the cameras: the configuration outlives the
        artifacts folder of the version that shipped it (a new version keeps the key, a rollback
        or re-deploy may point at another folder), and its crops were merged when it was there.
        It is a warning and an ``error`` event; the component keeps serving."""
        added_total = 0
        for a in archives:
            path = self._artifact_path(a)
            if not path.is_file():
                self.error("gallery", f"gallery archive {a} not found at {path}: skipped (its crops were merged when it "
                           "was shipped; the gallery keeps them)")
                continue
            added = self.gallery.merge_archive(path, skip=self.erased.names())
            added_total += added
            log.info("gallery archive %s: %d new crop(s)", a, added)
        return added_total

    def _reindex(self) -> None:
        """Re-embed the gallery (new crops) with the serving recognizer; switch between frames."""
        from facefleet.recognition.loader import gallery_index

        self.slot.publish(index=gallery_index(self.gallery, self.models.recognizer))

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
            res = hot_swap(cfg, paths, self.gallery, self.slot, self.backends)
        except Exception as e:
            self.error("model", f"model swap failed, keeping the serving models: {one_line(e)}")
            return False
        self.paths = paths
        self.swaps += 1
        self.last_swap_ms = res.ms
        for ev in res.events:
            self.publish(ev)
        return True

    # ---- commands ---------------------------------------------------------------------------------
    def on_command(self, payload: bytes) -> None:
        """A command payload from the control plane's command topic (IoT Core or local MQTT)."""
        limit = IOT_CORE_MAX_PAYLOAD  # nothing larger can come through IoT Core
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
            if isinstance(cmd, FLEET_COMMANDS):  # erase, list_unknowns, promote_unknown: component/fleetcmds.py
                message, extra = run_fleet_command(self, cmd)
            else:
                message, ids = self.run_command(cmd)
                extra = {"identities": ids}
        except Exception as e:
            self.error("command", f"{cmd.command}: {one_line(e)}")
            self.publish(CommandResultEvent(device=self.cfg.device, command=cmd.command, request_id=cmd.request_id, ok=False,
                                            message=one_line(e)))
            return
        self.publish(CommandResultEvent(device=self.cfg.device, command=cmd.command, request_id=cmd.request_id, ok=True,
                                        message=message, **extra))

    def run_command(self, cmd) -> tuple[str, list[str] | None]:
        from facefleet.recognition.gallery import validate_name
        from facefleet.recognition.loader import largest_face_crop, update_index

        if isinstance(cmd, ListIds):
            names = self.gallery.names()
            shown = names_that_fit(names, LIST_REPLY_BUDGET)
            if len(shown) < len(names):
                return (f"{len(names)} identities, the first {len(shown)} listed (a reply must fit IoT Core's 128 KiB "
                        "payload)"), shown
            return f"{len(names)} identities", names
        with self._apply_lock, self.busy():
            name = validate_name(cmd.name)
            if isinstance(cmd, Enroll):
                image = decode_image(cmd, self.cfg.commands.effective_max_image_bytes, self.cfg.commands.max_image_pixels)
                # Its own Detector (own buffers) on the shared, thread-safe model: the cameras
                # keep processing while an enroll detects.
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
            self.slot.publish(index=index)  # each camera switches between two of its frames
        return message, None

    # ---- status -------------------------------------------------------------------------------------
    def status(self, last: dict[str, tuple[int, float]]) -> StatusEvent:
        now = time.monotonic()
        fps, stage_ms, cameras, usability = {}, {}, {}, {}
        for cid, w in list(self.cameras.items()):
            f0, t0 = last.get(cid, (0, now))
            fps[cid] = round((w.frames - f0) / (now - t0), 2) if now > t0 else 0.0
            last[cid] = (w.frames, now)
            cameras[cid] = w.stats.report()
            usability[cid] = w.pipeline.face_stats.snapshot(reset=True)
            for k, v in w.pipeline.clock.mean_ms().items():
                stage_ms[f"{cid}.{k}"] = round(v, 3)
        from facefleet.component.health import temperature_c

        models = self.models
        return StatusEvent(device=self.cfg.device, fps=fps, stage_ms=stage_ms, cameras=cameras, face_usability=usability,
                           temperature_c=temperature_c(self.backends),
                           models=Models(detector=models.detector.spec.fingerprint, recognizer=models.recognizer.fingerprint),
                           gallery_identities=len(self.index), spool_depth=self.spool.depth, dropped=self.spool.dropped,
                           dead_letter=self.spool.dead_letters,
                           spool_error=self.spool.disk_error, held_in_memory=self.spool.held_in_memory,
                           canary=getattr(self.models, "canary", None) or None)  # quality canary (issue 15.1)

    def _status_loop(self) -> None:
        last: dict[str, tuple[int, float]] = {}
        self.status(last)
        while not self._stop.wait(self.cfg.status_interval_s):
            try:
                self.publish(self.status(last))
            except Exception as e:
                log.warning("status: %s", e)
