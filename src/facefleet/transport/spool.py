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

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
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
    """Bounded FIFO of events in one SQLite file (WAL: a crashed process loses no committed row).

    A disk that refuses writes (full, read-only, I/O error) never reaches the cameras: events are
    then held in a bounded memory buffer (oldest dropped and counted when it is full), ``disk_error``
    says why, ``on_change`` is told, and every later put (and the forwarder's idle loop) retries the
    disk, so the spool recovers by itself when space returns.
    """

    def __init__(self, path: str | Path, max_events: int = 100_000, memory_max: int = 10_000, retry_s: float = 1.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _private(self.path)
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
            for suffix in ("-wal", "-shm"):  # personal data: 0600 like the gallery
                _private(Path(str(self.path) + suffix), create=False)
        except (sqlite3.Error, OSError) as e:
            raise FacefleetError(f"cannot open event spool {self.path}: {e}") from None
        self.max_events = max_events
        self.memory_max = memory_max
        self.retry_s = retry_s
        self.disk_error: str | None = None    # set while the disk refuses writes
        self.on_change: Callable[[str | None], None] | None = None  # told disk_error on each change
        self._mem: deque[SpoolItem] = deque()  # events held in memory while the disk refuses writes
        self._mem_seq = 0                      # memory items get negative seqs
        self._mem_dropped = 0                  # dropped from memory, not yet counted on disk
        self._unacked_deletes: set[int] = set()  # confirmed but not yet deleted from disk
        self._next_retry = 0.0
        self._lock = threading.Lock()
        self._nonempty = threading.Condition(self._lock)

    @property
    def depth(self) -> int:
        return self._depth - len(self._unacked_deletes) + len(self._mem)

    @property
    def dropped(self) -> int:
        return self._dropped + self._mem_dropped

    @property
    def held_in_memory(self) -> int:
        return len(self._mem)

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
            mem = {it.seq for it, _ in items if it.seq < 0}
            if mem:  # held in memory (the disk refuses writes): dropped and counted, they can never be sent
                self._mem = deque(it for it in self._mem if it.seq not in mem)
                self._mem_dropped += len(mem)
            disk = [(it, reason) for it, reason in items if it.seq > 0]
            if disk:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR REPLACE INTO dead_letter VALUES (?, ?, ?, ?, ?, ?, ?)",
                                         [(it.seq, it.topic, it.kind, it.payload, it.t_put, reason[:500], now)
                                          for it, reason in disk])
                    removed = 0
                    for it, _ in disk:
                        removed += self._db.execute("DELETE FROM events WHERE seq = ?", (it.seq,)).rowcount
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # never let a failed ROLLBACK hide the real error
                        with contextlib.suppress(sqlite3.Error):
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
        """Never raises for a disk problem: the rows go to disk, or to the memory buffer."""
        now = time.time()
        data = [(t, k, p.encode() if isinstance(p, str) else p, now) for t, k, p in rows]
        with self._lock:
            before = self.disk_error
            if self._mem:
                self._retry_disk_locked(force=False)
            if not self._mem:
                try:
                    self._insert_locked(data)
                except (sqlite3.Error, OSError) as e:
                    self._set_error_locked(e)
                    self._hold_locked(data)
            else:
                self._hold_locked(data)
            after = self.disk_error
            self._nonempty.notify_all()
        self._notify(before, after)

    def _insert_locked(self, data: list[tuple[str, str, bytes, float]], mem_dropped: int = 0) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT INTO events (topic, kind, payload, t_put) VALUES (?, ?, ?, ?)", data)
            over = self._depth + len(data) - self.max_events
            if over > 0:
                self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (over,))
            if over > 0 or mem_dropped:
                self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (max(over, 0) + mem_dropped,))
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (SQLITE_FULL does): never let a failed
            # ROLLBACK ("no transaction is active") hide the real error.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        if over > 0:
            self._dropped += over
            log.warning("event spool full (%d): dropped the %d oldest event(s), %d in total", self.max_events, over,
                        self._dropped)
        self._dropped += mem_dropped
        self._depth += len(data) - max(over, 0)

    def _hold_locked(self, data: list[tuple[str, str, bytes, float]]) -> None:
        for t, k, p, ts in data:
            self._mem_seq -= 1
            self._mem.append(SpoolItem(self._mem_seq, t, k, p, ts))
        while len(self._mem) > self.memory_max:
            self._mem.popleft()
            self._mem_dropped += 1

    def _set_error_locked(self, e: BaseException) -> None:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if self.disk_error is None:
            log.error("event spool %s: %s; holding events in memory (at most %d, then the oldest are dropped)",
                      self.path, msg, self.memory_max)
        self.disk_error = msg
        self._next_retry = time.monotonic() + self.retry_s

    def _retry_disk_locked(self, force: bool) -> None:
        """Move the memory buffer to disk and finish pending deletes, if the disk takes writes again."""
        if not force and time.monotonic() < self._next_retry:
            return
        try:
            if self._unacked_deletes:
                self._delete_locked(sorted(self._unacked_deletes))
                self._unacked_deletes.clear()
            if self._mem:
                self._insert_locked([(it.topic, it.kind, it.payload, it.t_put) for it in self._mem], self._mem_dropped)
                self._mem.clear()
                self._mem_dropped = 0
        except (sqlite3.Error, OSError) as e:
            self._set_error_locked(e)
            return
        if self.disk_error is not None:
            log.info("event spool %s writable again; events held in memory are on disk", self.path)
        self.disk_error = None

    def retry_disk(self) -> None:
        """Called periodically (by the forwarder): recover without waiting for the next event."""
        with self._lock:
            before = self.disk_error
            if before is None and not self._mem and not self._unacked_deletes:
                return
            self._retry_disk_locked(force=False)
            after = self.disk_error
        self._notify(before, after)

    def _notify(self, before: str | None, after: str | None) -> None:
        if (before is None) != (after is None) and self.on_change is not None:
            try:
                self.on_change(after)
            except Exception as e:
                log.warning("spool state callback failed: %s", e)

    def peek(self, limit: int, after: int = 0) -> list[SpoolItem]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT seq, topic, kind, payload, t_put FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                        (after, limit + len(self._unacked_deletes))).fetchall()
            except sqlite3.Error as e:
                log.warning("event spool %s: read failed: %s", self.path, e)
                rows = []
            items = [SpoolItem(*r) for r in rows if r[0] not in self._unacked_deletes][:limit]
            if len(items) < limit:
                items += list(self._mem)[:limit - len(items)]
        return items

    def _delete_locked(self, seqs: list[int]) -> int:
        removed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(seqs), 500):  # one statement per chunk, under SQLite's variable limit
                chunk = seqs[i:i + 500]
                cur = self._db.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
                removed += cur.rowcount
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        self._depth = max(0, self._depth - removed)
        return removed

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            mem = {s for s in seqs if s < 0}
            if mem:
                self._mem = deque(it for it in self._mem if it.seq not in mem)
            disk = [s for s in seqs if s > 0]
            if disk:
                try:
                    self._delete_locked(disk)
                except (sqlite3.Error, OSError) as e:  # a full disk can refuse even a delete (WAL)
                    self._set_error_locked(e)
                    self._unacked_deletes.update(disk)  # never sent again; deleted when the disk recovers

    def wait(self, timeout: float) -> bool:
        """Block until the spool holds something (or timeout); True if it does."""
        with self._lock:
            if self.depth == 0:
                self._nonempty.wait(timeout)
            return self.depth > 0

    def close(self) -> None:
        with self._lock:
            if self._mem or self._unacked_deletes:
                self._retry_disk_locked(force=True)
            if self._mem:
                log.error("event spool %s: %d event(s) held in memory could not be written (%s); they are lost",
                          self.path, len(self._mem), self.disk_error)
            self._db.close()


def _private(path: Path, create: bool = True) -> None:
    """Spooled events are personal data: the file is 0600 (created so, or tightened)."""
    if create and not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)


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
            self.spool.retry_disk()  # a full disk recovers by itself when space returns
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
