"""The component's IPC subscriptions, kept open.

Why: a Greengrass IPC stream can end under us (the nucleus closes it, or a stream error ends it:
``on_stream_error`` returning True closes the stream, then ``on_stream_closed`` runs). Without a
re-subscribe the component silently stops receiving commands or configuration changes. Each
subscription here is re-opened with exponential backoff (tenacity) until it is back or the
component stops; a deliberate close (a new command topic, shutdown) is not re-opened.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, wait_exponential

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


def ipc_error_text(e: BaseException) -> str:
    """An IPC error's own ``message`` field (str() of the SDK's error shapes is empty)."""
    msg = getattr(e, "message", None)
    text = str(msg if msg else e).strip().splitlines()
    body = text[0] if text else ""
    name = type(e).__name__
    return f"{name}: {body}" if body and name not in body else (body or name)


ACCESS_FIX = ("the component's accessControl must allow it: deploy the recipe's accessControl (resources with '+', "
              "no {iot:thingName}), or if your accessControl uses {iot:thingName} set interpolateComponentConfiguration: "
              "true in aws.greengrass.Nucleus's configuration")


def describe(what: str, e: BaseException) -> str:
    """One line naming the call, the nucleus's answer and, where known, the fix."""
    text = f"{what}: {ipc_error_text(e)}"
    if type(e).__name__ == "UnauthorizedError":
        text += f"; fix: {ACCESS_FIX}"
    return text


@dataclass
class _Sub:
    name: str
    open_fn: Callable[..., object]  # (on_stream_event, on_stream_error, on_stream_closed) -> (response, operation)
    operation: object = None
    generation: int = 0


class Subscriptions:
    """Open, replace and keep open IPC subscriptions."""

    def __init__(self, on_lost: Callable[[str, str], None], stop: threading.Event, max_backoff_s: float = 30.0):
        self._subs: dict[str, _Sub] = {}
        self._lock = threading.Lock()
        self._on_lost, self._stop, self.max_backoff_s = on_lost, stop, max_backoff_s
        self.reopened = 0

    def open(self, name: str, what: str, open_fn: Callable[..., object], on_event: Callable) -> None:
        """Subscribe now; raises FacefleetError (one line, with the fix) if the nucleus refuses.
        On success any previous subscription of this name is closed (new one first, then the old)."""
        with self._lock:
            old = self._subs.get(name)
            sub = _Sub(name, lambda **h: open_fn(on_stream_event=on_event, **h), generation=(old.generation + 1 if old else 1))
        try:
            self._start(sub)
        except Exception as e:
            raise FacefleetError(describe(what, e)) from None
        with self._lock:
            self._subs[name] = sub
        if old is not None:
            self._close_op(old)

    def _start(self, sub: _Sub) -> None:
        gen = sub.generation
        _, sub.operation = sub.open_fn(on_stream_error=lambda err: self._error(sub, gen, err),
                                       on_stream_closed=lambda: self._closed(sub, gen))

    def _error(self, sub: _Sub, gen: int, err: Exception) -> bool:
        log.warning("IPC stream %s failed: %s", sub.name, ipc_error_text(err))
        return True  # close it; _closed re-opens

    def _closed(self, sub: _Sub, gen: int) -> None:
        with self._lock:
            current = self._subs.get(sub.name)
        if self._stop.is_set() or current is not sub or sub.generation != gen:
            return  # a deliberate close
        self._on_lost(sub.name, "IPC stream closed by the nucleus; re-subscribing")
        threading.Thread(target=self._reopen, args=(sub, gen), name=f"resubscribe-{sub.name}", daemon=True).start()

    def _reopen(self, sub: _Sub, gen: int) -> None:
        def attempt():
            with self._lock:
                if self._subs.get(sub.name) is not sub or sub.generation != gen:
                    return  # replaced meanwhile
                sub.generation += 1
            self._start(sub)

        def before_sleep(rs):
            if rs.attempt_number in (1, 10) or rs.attempt_number % 100 == 0:
                log.warning("re-subscribing %s: %s (attempt %d)", sub.name, ipc_error_text(rs.outcome.exception()),
                            rs.attempt_number)

        retrying = Retrying(wait=wait_exponential(multiplier=0.1, max=self.max_backoff_s),
                            retry=retry_if_exception_type(Exception), stop=lambda rs: self._stop.is_set(),
                            before_sleep=before_sleep, sleep=self._stop.wait, reraise=True)
        try:
            retrying(attempt)
        except Exception as e:  # only when stopping
            log.info("gave up re-subscribing %s: %s", sub.name, ipc_error_text(e))
            return
        self.reopened += 1
        log.info("re-subscribed %s", sub.name)

    def _close_op(self, sub: _Sub) -> None:
        sub.generation += 1
        op = sub.operation
        if op is not None:
            try:
                op.close()
            except Exception as e:  # already closed
                log.debug("closing %s: %s", sub.name, e)

    def close_all(self) -> None:
        with self._lock:
            subs = list(self._subs.values())
            self._subs.clear()
        for s in subs:
            self._close_op(s)
