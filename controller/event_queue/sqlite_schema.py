"""The SQLite event queue's table (``sqlite_backend.py``): its schema and the columns added since,
the recovery at open, and its rows as the interface's records and events."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from controller.event_queue.interface import QueuedEvent
from easyfaas.event_invoke import InvocationRecord, InvocationStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    function_arn TEXT NOT NULL,
    account TEXT NOT NULL,
    payload TEXT NOT NULL,
    callback_url TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    due_at REAL NOT NULL,
    result TEXT,
    error TEXT,
    log_result TEXT,
    dead INTEGER NOT NULL DEFAULT 0,
    lease INTEGER,
    callback TEXT,
    traceparent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS invocations_due ON invocations(due_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS invocations_due_by_function ON invocations(function, due_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS invocations_account ON invocations(account, seq);
CREATE INDEX IF NOT EXISTS invocations_finished ON invocations(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS invocations_dead ON invocations(account, finished_at) WHERE dead = 1;
"""
COLUMNS = ("request_id, function, function_arn, account, payload, callback_url, status, attempts, enqueued_at, "
           "started_at, finished_at, result, error, log_result, dead, callback, traceparent")
INSERT = ("INSERT INTO invocations (request_id, function, function_arn, account, payload, callback_url, status, "
          "attempts, enqueued_at, due_at, traceparent, started_at, lease) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
LEASE_COLUMNS = ("seq, request_id, function, function_arn, account, payload, callback_url, enqueued_at, attempts, "
                 "traceparent")


def open_database(path: Path) -> tuple[sqlite3.Connection, int, list[tuple[str, str, float]]]:
    """The writer's connection, with how many events a crashed predecessor left running (queued
    again now) and the (function, request id, enqueued_at) of every event queued or running.

    WAL at ``synchronous=NORMAL`` with no automatic checkpoint: a commit writes the WAL and does not
    sync it, and the queue makes each commit durable itself (an fdatasync of the WAL on its thread)
    and checkpoints from there (``sqlite_backend.py``). At NORMAL, SQLite still syncs the WAL before
    a checkpoint and the database after it, so what a checkpoint copies is never lost."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(invocations)")}
    if "callback" not in columns:
        db.execute("ALTER TABLE invocations ADD COLUMN callback TEXT")  # a queue made before callbacks
    if "traceparent" not in columns:  # ... or before trace context
        db.execute("ALTER TABLE invocations ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''")
    # Whatever was running when the last controller died is queued again: its attempt counts.
    cur = db.execute("UPDATE invocations SET status = 'queued', due_at = ? WHERE status = 'running'", (time.time(),))
    recovered = cur.rowcount
    active = db.execute("SELECT function, request_id, enqueued_at FROM invocations "
                        "WHERE status IN ('queued', 'running')").fetchall()
    return db, recovered, active


def json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def event_of(row: tuple[Any, ...]) -> QueuedEvent:
    return QueuedEvent(request_id=row[0], function=row[1], function_arn=row[2], account=row[3], payload=row[4],
                       callback_url=row[5], enqueued_at=row[8], traceparent=row[16])


def record_of(row: tuple[Any, ...]) -> InvocationRecord:
    return InvocationRecord(RequestId=row[0], FunctionArn=row[2], Account=row[3], Status=InvocationStatus(row[6]),
                            Attempts=row[7], EnqueuedAt=row[8], StartedAt=row[9], FinishedAt=row[10],
                            Result=row[11], Error=json.loads(row[12]) if row[12] else None, LogResult=row[13],
                            DeadLetter=bool(row[14]), Extra=_extra(json.loads(row[15]) if row[15] else None, row[16]))


def _extra(callback: Any, traceparent: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if callback:
        extra["Callback"] = callback
    if traceparent:
        extra["Traceparent"] = traceparent
    return extra
