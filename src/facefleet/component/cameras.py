"""One thread per camera: frames -> pipeline -> spool. A model swap happens between two frames
(the component holds ``infer_lock`` around each frame and around the switch), so no frame is
dropped or run half on the old model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from facefleet.config import CameraConfig
from facefleet.events import ErrorEvent
from facefleet.planfit import PlanGuard
from facefleet.recognition.pipeline import FacePipeline

log = logging.getLogger(__name__)


def source_target(cam: CameraConfig) -> str:
    return cam.source[len("file://"):] if cam.source.lower().startswith("file://") else cam.source


class CameraWorker:
    def __init__(self, cam: CameraConfig, pipeline: FacePipeline, infer_lock: threading.Lock,
                 publish: Callable, device: str, retry_s: float = 5.0):
        self.cam, self.pipeline, self.infer_lock, self.publish = cam, pipeline, infer_lock, publish
        self.device, self.retry_s = device, retry_s
        self.frames = 0
        self._plans = PlanGuard()  # the plan is checked against the frames it really gets
        self.finished = threading.Event()  # a file source reached its end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{cam.id}", daemon=True)

    def start(self) -> CameraWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        from facefleet.sources import open_source

        while not self._stop.is_set():
            source = None
            try:
                source = open_source(source_target(self.cam), fps_cap=self.cam.fps_cap)
                for frame in source:
                    if self._stop.is_set():
                        break
                    with self.infer_lock:
                        misfit = self._plans.check(self.pipeline, frame.image.shape[1], frame.image.shape[0])
                        events = self.pipeline.process(frame)
                    if misfit:  # once per source/configuration, not once per frame
                        log.warning("camera %s: %s", self.cam.id, misfit)
                        self.publish(ErrorEvent(device=self.device, source="camera", message=f"camera {self.cam.id}: {misfit}"))
                    self.frames += 1
                    for ev in events:
                        self.publish(ev)
                with self.infer_lock:
                    events = self.pipeline.flush()
                for ev in events:
                    self.publish(ev)
                if not getattr(source, "live", False):
                    self.finished.set()
                    return
            except Exception as e:  # a camera failure is an event, never the end of the component
                log.warning("camera %s: %s", self.cam.id, e)
                try:
                    self.publish(ErrorEvent(device=self.device, source="camera", message=f"camera {self.cam.id}: {e}"))
                except Exception as pe:  # the handler must not end the thread either
                    log.error("camera %s: cannot publish the error event: %s", self.cam.id, pe)
                self._stop.wait(self.retry_s)
            finally:
                if source is not None:
                    source.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
