"""JSONL sink: one JSON event per line, to stdout or a file (appended, flushed per event)."""

from __future__ import annotations

import contextlib
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
                self._fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                self._heal_tail()
            except OSError as e:
                raise FacefleetError(f"cannot write events to {p}: {e.strerror}") from None
            self._path = p
            self._own = True
        self.count = 0

    def _heal_tail(self) -> None:
        """A line torn by an earlier crash or full disk must not swallow this run's first event."""
        end = os.lseek(self._fd, 0, os.SEEK_END)
        if end and os.pread(self._fd, 1, end - 1) != b"\n":
            os.write(self._fd, b"\n")

    def publish(self, event) -> None:
        self.write_line(to_json(event))

    def write_line(self, payload: str | bytes) -> None:
        """One event already serialized (a spooled payload)."""
        line = (payload.decode("utf-8") if isinstance(payload, bytes) else payload) + "\n"
        if not self._own:
            self._f.write(line)
            self._f.flush()
        else:  # one write per line; a partial write is cut back, so the file never holds half a line
            data = line.encode("utf-8")
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                n = os.write(self._fd, data)
                if n != len(data):
                    raise OSError(28, "No space left on device (short write)")
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise FacefleetError(f"cannot write events to {self._path}: {e.strerror or e}") from None
        self.count += 1

    def close(self) -> None:
        if self._own:
            os.close(self._fd)
