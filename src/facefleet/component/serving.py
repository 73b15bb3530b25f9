"""What the cameras serve with: the model pair, the gallery index and the configuration, as ONE
reference that changes atomically.

Why: cameras process in parallel (no process-wide lock around frames), yet a model swap must
switch each camera between two of its frames, never half a frame on the old model. Each camera
takes the current ``Serving`` once per frame (``acquire``) and gives it back after the frame
(``release``); a swap only replaces the reference (``publish``). Old models are closed when the
last frame that took them is done, so a camera still on the old pair finishes its frame on it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    models: object  # recognition.loader.ModelPair
    index: object   # recognition.index.GalleryIndex, embedded with models.recognizer
    cfg: object     # config.ComponentConfig
    generation: int = 0


class ServingSlot:
    """The current ``Serving`` plus a count of the frames using each model pair."""

    def __init__(self, first: Serving):
        self._lock = threading.Lock()
        self._current = first
        self._users: dict[int, int] = {}
        self._retired: dict[int, object] = {}  # id(models) -> models waiting for their last frame

    @property
    def current(self) -> Serving:
        return self._current

    def acquire(self) -> Serving:
        with self._lock:
            s = self._current
            self._users[id(s.models)] = self._users.get(id(s.models), 0) + 1
            return s

    def release(self, s: Serving) -> None:
        key = id(s.models)
        with self._lock:
            left = self._users[key] = self._users[key] - 1
            if left == 0:
                del self._users[key]
            done = self._retired.pop(key, None) if left == 0 else None
        if done is not None:
            self._close(done)

    def publish(self, models=None, index=None, cfg=None) -> Serving:
        """Replace what is served (unset fields are kept). A replaced model pair is closed once no
        frame uses it any more: at once if no camera is in a frame."""
        with self._lock:
            old = self._current
            new = Serving(models if models is not None else old.models, index if index is not None else old.index,
                          cfg if cfg is not None else old.cfg, old.generation + 1)
            self._current = new
            close = None
            if new.models is not old.models:
                if self._users.get(id(old.models)):
                    self._retired[id(old.models)] = old.models
                else:
                    close = old.models
        if close is not None:
            self._close(close)
        return new

    def in_use(self, models) -> int:
        """Frames running on ``models`` now (tests and logs)."""
        with self._lock:
            return self._users.get(id(models), 0)

    @staticmethod
    def _close(models) -> None:
        try:
            models.close()
        except Exception as e:  # closing must never end a camera thread
            log.warning("closing replaced models: %s", e)

    def close(self) -> None:
        with self._lock:
            pending = [self._current.models, *self._retired.values()]
            self._retired.clear()
        for m in pending:
            self._close(m)
