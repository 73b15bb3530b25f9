"""Event stores at fleet scale: PostgreSQL for several consumers, and one reader for the report.

One consumer with SQLite is one machine. With PostgreSQL any number of consumers can take
messages from one SQS queue (competing consumers) and write into one database: the primary key
on ``event_id`` plus ``INSERT ... ON CONFLICT DO NOTHING`` make every write idempotent, so a
message delivered twice (SQS is at-least-once, devices resend after a crash) is stored once no
matter which consumer gets which copy.

``facefleet events --store postgresql://USER@HOST/DB`` (the password from ``PGPASSWORD`` or
``~/.pgpass``, never the command line) and ``facefleet events report --db`` take a PostgreSQL
URL or an SQLite file alike (:func:`read_events`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

PG_SCHEMES = ("postgresql://", "postgres://")

_PG_TABLE = """CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, type TEXT, device TEXT, camera_id TEXT, identity TEXT, decision TEXT,
    timestamp TIMESTAMPTZ, body JSONB NOT NULL)"""
_PG_LOCK = 0x66616365  # advisory lock id: concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type


def is_postgres(target: str) -> bool:
    return target.startswith(PG_SCHEMES)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise FacefleetError("PostgreSQL stores need psycopg: pip install 'facefleet[cloud]'") from None
    return psycopg


def _pg_connect(url: str):
    psycopg = _psycopg()
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FacefleetError(f"cannot connect to PostgreSQL: {first}") from None


class PostgresStore:
    """One row per event id in a PostgreSQL table; safe to share between consumers."""

    def __init__(self, url: str):
        self._db = _pg_connect(url)
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            self._db.execute(_PG_TABLE)

    def add(self, event: dict, raw: str) -> bool:
        """Store ``event`` unless its id is there already (True when stored now)."""
        cur = self._db.execute(
            "INSERT INTO events (event_id, type, device, camera_id, identity, decision, timestamp, body) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (event_id) DO NOTHING",
            (event["event_id"], event.get("type"), event.get("device"), event.get("camera_id"), event.get("identity"),
             event.get("decision"), event.get("timestamp"), raw))
        return cur.rowcount == 1

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def read_events(target: str, batch: int = 5000) -> Iterator[dict]:
    """Every stored event (the JSON body), oldest first, from an SQLite file written by
    ``facefleet events --out X.sqlite`` or a PostgreSQL URL. Streams: memory stays bounded."""
    if is_postgres(target):
        db = _pg_connect(target)
        try:
            with db.transaction(), db.cursor(name="facefleet_report") as cur:  # server-side cursor
                cur.itersize = batch
                cur.execute("SELECT body::text FROM events ORDER BY timestamp, event_id")
                for (body,) in cur:
                    yield json.loads(body)
        finally:
            db.close()
        return
    path = Path(target)
    if not path.is_file():
        raise FacefleetError(f"event database not found: {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = db.execute("SELECT body FROM events ORDER BY timestamp, event_id")
    except sqlite3.DatabaseError as e:
        raise FacefleetError(f"{path} is not an event database made by 'facefleet events': {e}") from None
    try:
        while chunk := rows.fetchmany(batch):
            for (body,) in chunk:
                try:
                    yield json.loads(body)
                except json.JSONDecodeError:
                    log.warning("skipping an unreadable row in %s", path)
    finally:
        db.close()


def register(sub) -> None:
    """``facefleet events --store URL``: where the consumer stores (an alias of ``--out`` that
    also takes a PostgreSQL URL)."""
    events = sub.choices.get("events")
    if events is not None:
        events.add_argument("--store", dest="out", metavar="URL_OR_FILE",
                            help="postgresql://USER@HOST/DB (several consumers may share it; password from PGPASSWORD), "
                                 "or a .sqlite/.jsonl file like --out")
