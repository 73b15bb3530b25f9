"""Names erased from the fleet, kept in the work folder so no shipped archive brings them back.

A gallery archive a version ships is merged again on every start and configuration change, and
publish carries archives into later versions: without this list an erased person would return
with the next merge. The list survives restarts (one small JSON file, written atomically) and is
bounded (an erase list longer than ``MAX_NAMES`` is refused, never grown without end).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from facefleet.errors import FacefleetError

MAX_NAMES = 100_000


class ErasedNames:
    """A persistent set of identity names; ``add`` is durable before it returns.

    An unreadable file never stops the cameras, and never lets an erased person back: ``names``
    and ``add`` raise (one line, with the fix), so archive merges are skipped with an error event
    and erase commands fail until the file is fixed or removed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self.problem: str | None = None
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not isinstance(data.get("erased"), list) \
                        or not all(isinstance(n, str) for n in data["erased"]):
                    raise ValueError('not {"erased": [names]}')
                self._names = set(data["erased"][:MAX_NAMES])
            except (OSError, ValueError, RecursionError) as e:
                self.problem = (f"erased-names list {self.path} is unreadable ({str(e).splitlines()[0]}): archives are not "
                                "merged and erase is refused until it is fixed or removed")

    def _check(self) -> None:
        if self.problem:
            raise FacefleetError(self.problem)

    def names(self) -> frozenset[str]:
        self._check()
        with self._lock:
            return frozenset(self._names)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def add(self, name: str) -> None:
        self._check()
        with self._lock:
            if name in self._names:
                return
            if len(self._names) >= MAX_NAMES:
                raise FacefleetError(f"erased-names list is full ({MAX_NAMES} names)")
            self._write(self._names | {name})
            self._names.add(name)

    def discard(self, name: str) -> None:
        """An operator enrolls the name again on purpose (promotion): archives may carry it again."""
        if self.problem:
            return
        with self._lock:
            if name in self._names:
                self._write(self._names - {name})
                self._names.discard(name)

    def _write(self, names: set[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"erased": sorted(names)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise FacefleetError(f"erased-names list {self.path} not written: {e.strerror or e}") from None
