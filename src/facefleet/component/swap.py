"""The validated hot model swap of the component (whatever its control plane), and the file
watcher of local mode (``facefleet run --config FILE.yaml``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facefleet.component.models import ModelPaths, load_pair
from facefleet.config import ComponentConfig
from facefleet.events import ModelChangedEvent
from facefleet.runtime import BackendPool

log = logging.getLogger(__name__)


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    message = getattr(e, "message", None)
    if not text and message:  # the Greengrass IPC error shapes: str() is empty, the text is in .message
        text = f"{type(e).__name__}: {message}"
    lines = text.splitlines()
    return (lines[0] if lines else type(e).__name__)[:500]


@dataclass
class SwapResult:
    models: object  # ModelPair
    index: object   # GalleryIndex
    ms: float
    events: list[ModelChangedEvent]


def hot_swap(cfg: ComponentConfig, paths: ModelPaths, gallery, slot, backends: BackendPool) -> SwapResult:
    """Load beside the serving models (the constructors self-test), re-embed the gallery from
    its crops, then publish the new pair in ``slot`` (a ServingSlot): each camera switches between
    two of its frames, and the old pair is closed once the last frame on it is done. Raises, with
    nothing changed, on any failure before the switch."""
    from facefleet.recognition.loader import gallery_index

    t0 = time.perf_counter()
    old_models = slot.current.models
    pair = load_pair(cfg, paths, backends)
    try:
        index = gallery_index(gallery, pair.recognizer)
    except Exception:
        pair.close()
        raise
    slot.publish(models=pair, index=index, cfg=cfg)
    ms = (time.perf_counter() - t0) * 1000
    events = []
    for role, o, n in (("detector", old_models.detector.spec.fingerprint, pair.detector.spec.fingerprint),
                       ("recognizer", old_models.recognizer.fingerprint, pair.recognizer.fingerprint)):
        if o != n:
            events.append(ModelChangedEvent(device=cfg.device, role=role, old=o, new=n, gallery_identities=len(index), swap_ms=ms))
    log.info("models swapped in %.0f ms: detector %s, recognizer %s", ms, pair.detector.spec.fingerprint, pair.recognizer.fingerprint)
    return SwapResult(pair, index, ms, events)


def _load_component_config(path: Path) -> ComponentConfig:
    from facefleet.config import load_config

    return load_config(path, ComponentConfig)


class FileWatcher:
    """Local mode: poll a YAML file; on a change, parse it with the component schema and hand it
    to ``apply``. A file that does not parse is reported and the pipeline keeps its configuration."""

    def __init__(self, path: str | Path, apply: Callable[[ComponentConfig], None], on_error: Callable[[str], None],
                 interval_s: float = 1.0, settle_s: float = 0.3, load: Callable[[Path], object] | None = None):
        self.path, self.apply, self.on_error, self.interval_s = Path(path), apply, on_error, interval_s
        self.load = load or _load_component_config  # what ``apply`` is handed
        self.settle_s = settle_s
        self._stamp = self._stat()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)

    def _stat(self):
        try:
            st = self.path.stat()
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def _settled(self, stamp, rounds: int = 20):
        """Wait until the file is unchanged for ``settle_s`` (an editor or ``cp`` may be mid-write)."""
        for _ in range(rounds):
            time.sleep(self.settle_s)
            now = self._stat()
            if now == stamp:
                return stamp
            stamp = now
        return stamp

    def start(self) -> FileWatcher:
        self._thread.start()
        return self

    def check(self) -> bool:
        """One poll; True if the file changed (and was handed on or reported)."""
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return False
        stamp = self._settled(stamp)  # a file still being written is not applied half-written
        self._stamp = stamp
        try:
            cfg = self.load(self.path)
        except Exception as e:
            self.on_error(one_line(e))
            return True
        try:
            self.apply(cfg)
        except Exception as e:
            self.on_error(one_line(e))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
