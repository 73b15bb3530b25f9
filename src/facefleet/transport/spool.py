"""Durable event spool (SQLite) and the forwarder that drains it into a sink.

Why: Greengrass spools IoT Core messages in memory (2.5 MiB by default) and loses them on a
nucleus restart; when that spooler is full it REJECTS new QoS 1 messages. Every event goes
through this queue first and is deleted only after the sink confirms it (PUBACK for MQTT; for
IPC, the nucleus accepted it into its spooler: see docs/greengrass.md for where that guarantee
ends), so a broker outage, a full nucleus spooler or a killed process loses nothing; delivery is
at-least-once and consumers de-duplicate on ``event_id``. The spool is bounded: when full the
oldest event is dropped and counted. An event the transport can NEVER take (over its payload
limit, or refused as invalid) is moved to the ``dead_letter`` table and counted, so it neither
blocks the events behind it nor is retried forever.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tenacity import Retrying, retry_if_exception_type, wait_exponential

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpoolItem:
    seq: int
    topic: str
    kind: str
    payload: bytes
    t_put: float  # time.time() when spooled (publish latency = confirmation - t_put)


@dataclass(frozen=True)
class Rejected:
    """A sink's verdict that an item can never be delivered (retrying cannot help)."""

    reason: str


class Sink(Protocol):
    def send(self, items: list[SpoolItem]) -> list[bool | Rejected]:
        """Deliver ``items``; return, per item, True (confirmed), False (retry later) or Rejected."""

    def close(self) -> None: ...


class SinkUnavailable(Exception):
    """The sink confirmed only some items (or none): retry later with backoff."""


class Spool:
    """Bounded FIFO of events in one SQLite file (WAL: a crashed process loses no committed row)."""

    def __init__(self, path: str | Path, max_events: int = 100_000):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
                             "kind TEXT NOT NULL, payload BLOB NOT NULL, t_put REAL NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS dead_letter (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
                             "kind TEXT NOT NULL, payload BLOB NOT NULL, t_put REAL NOT NULL, reason TEXT NOT NULL, "
                             "t_dead REAL NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
            self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            self._dropped = self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0]
            self._dead = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        except sqlite3.Error as e:
            raise FacefleetError(f"cannot open event spool {self.path}: {e}") from None
        self.max_events = max_events
        self._lock = threading.Lock()
        self._nonempty = threading.Condition(self._lock)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def dead_letters(self) -> int:
        """Events set aside because the transport can never take them (kept for inspection)."""
        return self._dead

    def set_aside(self, items: list[tuple[SpoolItem, str]]) -> None:
        """Move undeliverable events to the dead_letter table (one transaction), counted."""
        if not items:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO dead_letter VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [(it.seq, it.topic, it.kind, it.payload, it.t_put, reason[:500], now) for it, reason in items])
                removed = 0
                for it, _ in items:
                    removed += self._db.execute("DELETE FROM events WHERE seq = ?", (it.seq,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth = max(0, self._depth - removed)
            self._dead = self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        for it, reason in items:
            log.warning("event %d (%s, %d bytes) set aside, the transport can never take it: %s", it.seq, it.kind,
                        len(it.payload), reason)

    def dead_letter_items(self, limit: int = 1000) -> list[tuple[SpoolItem, str]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, kind, payload, t_put, reason FROM dead_letter ORDER BY seq LIMIT ?",
                                    (limit,)).fetchall()
        return [(SpoolItem(*r[:5]), r[5]) for r in rows]

    def put(self, topic: str, kind: str, payload: bytes | str) -> None:
        self.put_many([(topic, kind, payload)])

    def put_many(self, rows: list[tuple[str, str, bytes | str]]) -> None:
        now = time.time()
        data = [(t, k, p.encode() if isinstance(p, str) else p, now) for t, k, p in rows]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO events (topic, kind, payload, t_put) VALUES (?, ?, ?, ?)", data)
                over = self._depth + len(data) - self.max_events
                if over > 0:
                    self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (over,))
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (over,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if over > 0:
                self._dropped += over
                log.warning("event spool full (%d): dropped the %d oldest event(s), %d in total", self.max_events, over,
                            self._dropped)
            self._depth += len(data) - max(over, 0)
            self._nonempty.notify_all()

    def peek(self, limit: int, after: int = 0) -> list[SpoolItem]:
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, kind, payload, t_put FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (after, limit)).fetchall()
        return [SpoolItem(*r) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            removed = 0
            for i in range(0, len(seqs), 500):  # one statement per chunk, under SQLite's variable limit
                chunk = seqs[i:i + 500]
                cur = self._db.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
            self._depth = max(0, self._depth - removed)

    def wait(self, timeout: float) -> bool:
        """Block until the spool holds something (or timeout); True if it does."""
        with self._lock:
            if self._depth == 0:
                self._nonempty.wait(timeout)
            return self._depth > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Forwarder:
    """Drains the spool into a sink on its own thread; retries with backoff (tenacity) while
    the sink is down, acknowledging only what the sink confirmed."""

    def __init__(self, spool: Spool, sink: Sink, batch: int = 200, max_backoff_s: float = 2.0):
        self.spool, self.sink, self.batch = spool, sink, batch
        self.max_payload: int | None = getattr(sink, "max_payload", None)  # the transport's hard limit, if it has one
        self.max_backoff_s = max_backoff_s
        self.sent = 0
        self.failures = 0
        self.latencies: deque[float] = deque(maxlen=200_000)  # seconds from spool to confirmation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-forwarder", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def _round(self) -> None:
        items = self.spool.peek(self.batch)
        if not items:
            return
        if self.max_payload is not None:
            over = [(it, f"payload of {len(it.payload)} bytes is over the transport's limit of {self.max_payload}")
                    for it in items if len(it.payload) > self.max_payload]
            if over:
                self.spool.set_aside(over)
                items = [it for it in items if len(it.payload) <= self.max_payload]
                if not items:
                    return
        ok = self.sink.send(items)
        now = time.time()
        rejected = [(it, r.reason) for it, r in zip(items, ok, strict=True) if isinstance(r, Rejected)]
        self.spool.set_aside(rejected)
        done = [it for it, good in zip(items, ok, strict=True) if good is True]
        self.spool.ack([it.seq for it in done])
        items = [it for it, r in zip(items, ok, strict=True) if not isinstance(r, Rejected)]
        self.latencies.extend(now - it.t_put for it in done)
        self.sent += len(done)
        if len(done) < len(items):
            raise SinkUnavailable(f"{len(items) - len(done)} of {len(items)} event(s) not confirmed")

    def _before_sleep(self, rs) -> None:
        self.failures += 1
        if rs.attempt_number in (1, 10) or rs.attempt_number % 100 == 0:
            log.warning("event sink: %s; retrying (attempt %d, %d spooled)", rs.outcome.exception(), rs.attempt_number,
                        self.spool.depth)

    def _run(self) -> None:
        retrying = Retrying(wait=wait_exponential(multiplier=0.05, max=self.max_backoff_s),
                            retry=retry_if_exception_type(Exception),
                            stop=lambda rs: self._stop.is_set(), before_sleep=self._before_sleep, reraise=True,
                            sleep=self._stop.wait)
        while not self._stop.is_set():
            if not self.spool.wait(0.2):
                continue
            try:
                retrying(self._round)
            except Exception as e:  # only when stopping
                log.info("forwarder stopped with events pending: %s", e)

    def drain(self, timeout: float) -> bool:
        """Wait until the spool is empty (True) or timeout (False)."""
        end = time.monotonic() + timeout
        while self.spool.depth and time.monotonic() < end:
            time.sleep(0.02)
        return self.spool.depth == 0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self.spool._lock:
            self.spool._nonempty.notify_all()
        self._thread.join(timeout)


def event_topic(template: str, thing: str, kind: str) -> str:
    return template.replace("{thing}", thing).replace("{type}", kind)


class SpooledPublisher:
    """``publish(event)`` for the pipeline: the event goes to the spool, never straight to the sink."""

    def __init__(self, spool: Spool, topic_template: str, thing: str):
        self.spool, self.topic_template, self.thing = spool, topic_template, thing

    def publish(self, event) -> None:
        from facefleet.events import to_json

        self.spool.put(event_topic(self.topic_template, self.thing, event.type), event.type, to_json(event))
