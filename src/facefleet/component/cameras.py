"""One thread per camera: reader -> pipeline -> publish, in parallel with the other cameras.

No lock is shared between cameras. Each frame runs on ONE ``Serving`` taken from the slot when
the frame starts (see serving.py): a model swap switches this camera between two of its frames,
never within one. The camera's pipeline (tracker, scratch buffers, its own Detector fork) is
touched by this thread only. The reader (capture.reader) decodes on its own thread and, for a
live source, keeps only the newest frame; its statistics are the camera's status.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from facefleet.capture.reader import CameraReader
from facefleet.capture.stats import CameraStats
from facefleet.component.serving import Serving, ServingSlot
from facefleet.config import CameraConfig
from facefleet.events import ErrorEvent
from facefleet.planfit import PlanGuard

log = logging.getLogger(__name__)

Opener = Callable[[CameraConfig, CameraStats], CameraReader]


def open_reader(cam: CameraConfig, stats: CameraStats) -> CameraReader:
    """The default opener: the camera's decoder and detection rate (capture.config.open_camera)."""
    from facefleet.capture.config import CameraSource, open_camera

    src = CameraSource(source=cam.target, decoder=cam.decoder, hwaccel=cam.hwaccel, decode_threads=cam.decode_threads,
                       detect_fps=cam.detect_fps, live=cam.live)
    return open_camera(src, stats)


class CameraWorker:
    def __init__(self, cam: CameraConfig, slot: ServingSlot, publish: Callable, device: str,
                 opener: Opener = open_reader, retry_s: float = 5.0, strangers=None):
        from facefleet.recognition.pipeline import FacePipeline

        self.cam, self.slot, self.publish, self.device = cam, slot, publish, device
        self.opener, self.retry_s = opener, retry_s
        s = slot.current
        self.pipeline = FacePipeline(s.models.detector.fork(), s.models.recognizer, s.index, s.cfg, camera_id=cam.id,
                                     strangers=strangers)  # one book for all cameras: one stranger, one id
        self._generation = s.generation
        self.stats = CameraStats()
        self.frames = 0
        self.skipped = 0  # inputs of a finite source that could not be read
        self._plans = PlanGuard()  # the plan is checked against the frames it really gets
        self.finished = threading.Event()  # a finite source reached its end
        self._stop = threading.Event()
        self._reader: CameraReader | None = None
        self._thread = threading.Thread(target=self._run, name=f"camera-{cam.id}", daemon=True)

    def start(self) -> CameraWorker:
        self._thread.start()
        return self

    def _follow(self, s: Serving) -> None:
        """Move this camera to what the slot serves now (between two frames)."""
        if s.generation == self._generation:
            return
        p = self.pipeline
        p.cfg = s.cfg
        detector = p.detector if p.detector.model is s.models.detector.model else s.models.detector.fork()
        p.set_models(detector, s.models.recognizer, s.index)
        self._generation = s.generation

    def _frame(self, frame) -> tuple[list, str | None]:
        s = self.slot.acquire()
        try:
            self._follow(s)
            misfit = self._plans.check(self.pipeline, frame.image.shape[1], frame.image.shape[0])
            return self.pipeline.process(frame), misfit
        finally:
            self.slot.release(s)

    def _flush(self) -> list:
        s = self.slot.acquire()
        try:
            self._follow(s)
            return self.pipeline.flush()
        finally:
            self.slot.release(s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._reader = reader = self.opener(self.cam, self.stats)
            except Exception as e:
                self._camera_error(e)
                continue
            try:
                for frame in reader:
                    if self._stop.is_set():
                        break
                    events, misfit = self._frame(frame)
                    if misfit:  # once per source/configuration, not once per frame
                        log.warning("camera %s: %s", self.cam.id, misfit)
                        self.publish(ErrorEvent(device=self.device, source="camera", message=f"camera {self.cam.id}: {misfit}"))
                    self.frames += 1
                    for ev in events:
                        self.publish(ev)
                for ev in self._flush():
                    self.publish(ev)
                if not reader.live:
                    self.skipped = reader.skipped
                    self.finished.set()
                    return
            except Exception as e:  # a camera failure is an event, never the end of the component
                self._camera_error(e)
            finally:
                reader.close()

    def _camera_error(self, e: BaseException) -> None:
        log.warning("camera %s: %s", self.cam.id, e)
        try:
            self.publish(ErrorEvent(device=self.device, source="camera", message=f"camera {self.cam.id}: {e}"))
        except Exception as pe:  # the handler must not end the thread either
            log.error("camera %s: cannot publish the error event: %s", self.cam.id, pe)
        self._stop.wait(self.retry_s)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        reader = self._reader
        if reader is not None:
            reader.close(timeout)
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
