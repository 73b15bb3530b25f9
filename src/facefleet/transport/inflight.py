"""Adapting QoS 1 delivery to the link: an in-flight window and timeouts from measured round trips.

Why: a fixed 5 s PUBACK deadline with batches of 200 never confirms anything on a link whose
PUBACKs take 6 s, and every retry re-publishes the whole batch (the broker saw 1,600 duplicates
for 500 events). Here a publish stays in flight until its PUBACK (or the client's failure on a
disconnect) arrives, across calls, so it is never published twice while it is pending; the wait
per call follows the measured round trip (SRTT + 4 RTTVAR, as TCP's RFC 6298); the number in
flight grows while the link keeps up and halves when it does not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass


@dataclass
class _Pending:
    future: Future
    sent: float
    done_at: float | None = None


class InFlight:
    def __init__(self, min_timeout_s: float = 5.0, max_timeout_s: float = 120.0, window: int = 50,
                 min_window: int = 1, max_window: int = 2000):
        self.min_timeout_s, self.max_timeout_s = min_timeout_s, max_timeout_s
        self.window, self.min_window, self.max_window = window, min_window, max_window
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()

    @property
    def timeout_s(self) -> float:
        """How long one call waits for PUBACKs: from the measured round trip, within bounds."""
        if self.srtt is None:
            return self.min_timeout_s
        return min(self.max_timeout_s, max(self.min_timeout_s, 1.5 * self.srtt + 4 * self.rttvar))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def deliver(self, keys: list[int], publish: Callable[[int], Future | None],
                confirmed: Callable[[Future], bool]) -> list[bool]:
        """Publish what is not yet in flight (within the window), wait for the PUBACKs of ``keys``
        up to ``timeout_s``, and tell per key whether it is confirmed. A key still in flight
        reports False and is NOT published again by the next call; a failed one is."""
        for k in keys:
            if k in self._pending:
                continue
            if len(self._pending) >= self.window:
                break
            fut = publish(k)
            if fut is None:
                continue
            p = _Pending(fut, time.monotonic())
            fut.add_done_callback(lambda _f, p=p: setattr(p, "done_at", time.monotonic()))
            self._pending[k] = p
        mine = [self._pending[k].future for k in keys if k in self._pending]
        wait(mine, timeout=self.timeout_s)
        ok, late, now = [], False, time.monotonic()
        for k in keys:
            p = self._pending.get(k)
            if p is None:
                ok.append(False)  # outside the window this round
                continue
            if not p.future.done():
                ok.append(False)
                late = late or now - p.sent >= self.timeout_s  # overdue, not merely recent
                continue
            del self._pending[k]
            good = confirmed(p.future)
            if good and p.done_at is not None:
                self._sample(p.done_at - p.sent)
            ok.append(good)
        wanted = set(keys)
        for k in [k for k, p in self._pending.items() if k not in wanted and p.future.done()]:
            del self._pending[k]  # finished but no longer offered (e.g. dropped from the spool)
        if late:  # the link does not keep up: fewer in flight
            self.window = max(self.min_window, self.window // 2)
        elif any(ok):  # every PUBACK in time: grow (doubles per round trip at most)
            self.window = min(self.max_window, self.window + sum(ok))
        return ok

    def forget(self) -> None:
        """After a disconnect: nothing is in flight any more."""
        self._pending.clear()
