"""JSONL sink: one JSON event per line, to stdout or a file (appended, flushed per event)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from facefleet.errors import FacefleetError
from facefleet.events import to_json


class JsonlSink:
    def __init__(self, target: str | Path = "-"):
        self._own = False
        if str(target) == "-":
            self._f: TextIO = sys.stdout
        else:
            p = Path(target)
            if p.parent and not p.parent.is_dir():
                raise FacefleetError(f"events folder does not exist: {p.parent}")
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                raise FacefleetError(f"cannot write events to {p}: {e.strerror}") from None
            self._f = os.fdopen(fd, "a", encoding="utf-8")
            self._own = True
        self.count = 0

    def publish(self, event) -> None:
        self._f.write(to_json(event) + "\n")
        self._f.flush()
        self.count += 1

    def close(self) -> None:
        if self._own:
            self._f.close()
