"""The embedded event queue: one SQLite database (WAL, ``synchronous=FULL``) in the controller's
state directory, owned by one controller.

Every write goes through one writer task that runs all writes pending at that moment in one
transaction (a group commit): an enqueue returns only after the commit's fsync, but concurrent
enqueues share it. Writes run on one thread (a one-thread executor). The reads of a few small
columns that every event would otherwise pay an executor hop and a loop wake-up for (the
dispatcher's lease selection, the next due time) run on the event loop through a second,
query-only connection: WAL lets it read the last commit while a write is under way, in tens of
µs. Records and listings, which may carry payloads and results, are read on the executor thread.
The depth and the enqueue bounds are kept in memory (``backlog.Backlogs``), moved as each commit is
delivered. A failed commit (disk full) rolls the whole batch back and fails each of its
writes: nothing half-written. At start, events a crashed predecessor left ``running`` are queued
again with their attempt counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from controller.event_queue.backlog import Backlogs
from controller.event_queue.interface import DeadLetter, Delivery, Outcome, QueueDepth, QueuedEvent, Room
from easyfaas.errors import ResourceConflict
from easyfaas.event_invoke import EventStoreUnavailable, InvocationRecord, InvocationStatus

log = structlog.get_logger(__name__)

T = TypeVar("T")
DB_NAME = "event-queue.sqlite3"

_SCHEMA = """
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
_COLUMNS = ("request_id, function, function_arn, account, payload, callback_url, status, attempts, enqueued_at, "
            "started_at, finished_at, result, error, log_result, dead, callback, traceparent")
_ACTIVE = ("queued", "running")
_LEASE_COLUMNS = ("seq, request_id, function, function_arn, account, payload, callback_url, enqueued_at, attempts, "
                  "traceparent")


Settled = Callable[[bool, Any], None]
"""Told on the event loop how a write ended, (True, its value) once committed, (False, the error)
otherwise, even when its caller is gone (cancelled): the backlog follows the database."""


class _Write:
    __slots__ = ("run", "future", "single", "settled")

    def __init__(self, run: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], single: bool,
                 settled: Settled | None) -> None:
        self.run = run
        self.future = future
        # One statement: SQLite undoes a failed statement by itself, so it needs no savepoint.
        self.single = single
        self.settled = settled

    def fail(self, error: BaseException) -> None:
        if self.settled is not None:
            self.settled(False, error)
        if not self.future.done():
            self.future.set_exception(error)


class SQLiteEventQueue:
    """The :class:`~controller.event_queue.interface.EventQueue` on SQLite."""

    def __init__(self, directory: str | os.PathLike[str], *, max_queued_per_function: int = 10000,
                 max_queued: int = 100000, record_ttl: float = 86400.0, max_records: int = 100000,
                 max_batch: int = 512) -> None:
        self.path = Path(directory) / DB_NAME
        self.max_queued_per_function = max_queued_per_function
        self.max_queued = max_queued
        self.record_ttl = record_ttl
        self.max_records = max_records
        self.max_batch = max_batch
        # The one thread that touches the writer's connection, fed through a SimpleQueue: a
        # ThreadPoolExecutor's submit (its idle semaphore, the future chaining) costs the loop more
        # per hop than the read or write it carries at a low rate.
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any],
                                            asyncio.AbstractEventLoop] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # query-only, used from the event loop only
        self._pending: list[_Write] = []
        self._wake_writer = asyncio.Event()
        self._work_due = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # Queued or running events per function: the bounds and the depth without a query.
        self._backlogs = Backlogs(max_queued_per_function, max_queued)
        self._leases = 0  # generation of leases, so a stale holder cannot finish an event twice
        self.commits = 0

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._serve, name="event-queue", daemon=True)
        self._thread.start()
        recovered, active = await self._in_thread(self._open)
        # The events hold callers' payloads: root-only, as stubs' store (SQLite gives its -wal and
        # -shm files the database's mode).
        os.chmod(self.path, 0o600)
        reader = sqlite3.connect(self.path, isolation_level=None)
        reader.execute("PRAGMA query_only=1")
        self._reader = reader
        self._backlogs = Backlogs(self.max_queued_per_function, self.max_queued)
        self._backlogs.restore(active)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._work_due.set()
        log.info("event_queue_opened", backend="sqlite", path=str(self.path), queued=self._backlogs.reserved,
                 recovered_running=recovered)

    def _open(self) -> tuple[int, list[tuple[str, str, float]]]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(invocations)")}
        if "callback" not in columns:
            db.execute("ALTER TABLE invocations ADD COLUMN callback TEXT")  # a queue made before callbacks
        if "traceparent" not in columns:  # ... or before trace context
            db.execute("ALTER TABLE invocations ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''")
        # Whatever was running when the last controller died is queued again: its attempt counts.
        cur = db.execute("UPDATE invocations SET status = 'queued', due_at = ? WHERE status = 'running'",
                         (time.time(),))
        recovered = cur.rowcount
        active = db.execute("SELECT function, request_id, enqueued_at FROM invocations "
                            "WHERE status IN ('queued', 'running')").fetchall()
        self._db = db
        return recovered, active

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        pending, self._pending = self._pending, []
        for write in pending:
            write.fail(EventStoreUnavailable("the event queue is closing"))
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()
        if self._db is not None:
            db, self._db = self._db, None
            await self._in_thread(db.close)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    # ---- plumbing ------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise EventStoreUnavailable("the event queue is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return await future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future, loop = job
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_resolve, future, outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits the answer any more

    async def _write(self, run: Callable[[sqlite3.Connection], T], *, single: bool = False,
                     settled: Settled | None = None) -> T:
        """Run ``run`` in the next group commit; ``single``: it runs one statement (or raises before).

        ``settled`` is told how it ended (see :data:`Settled`); not when this raises at once.
        """
        if self._writer is None:
            raise EventStoreUnavailable("the event queue is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(run, future, single, settled))
        self._wake_writer.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                try:
                    results = await self._in_thread(self._commit, batch)
                except sqlite3.Error as exc:
                    log.error("event_queue_commit_failed", error=str(exc), writes=len(batch))
                    err = EventStoreUnavailable(f"the event queue could not store the change: {exc}")
                    for write in batch:
                        write.fail(err)
                    continue
                self.commits += 1
                for write, (ok, value) in zip(batch, results):
                    if write.settled is not None:
                        write.settled(ok, value)
                    if write.future.done():
                        continue
                    if ok:
                        write.future.set_result(value)
                    else:
                        write.future.set_exception(value)

    def _commit(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        db = self._db
        assert db is not None
        results: list[tuple[bool, Any]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                # A write's own error (a duplicate id) fails that write only; a storage error
                # (sqlite3.OperationalError: disk full, I/O) rolls back the whole batch below.
                if write.single:
                    try:
                        results.append((True, write.run(db)))
                    except (sqlite3.IntegrityError, LookupError, ValueError) as exc:
                        results.append((False, exc))
                    continue
                db.execute("SAVEPOINT w")
                try:
                    results.append((True, write.run(db)))
                    db.execute("RELEASE w")
                except (sqlite3.IntegrityError, LookupError, ValueError) as exc:
                    db.execute("ROLLBACK TO w")
                    db.execute("RELEASE w")
                    results.append((False, exc))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    # ---- the queue -----------------------------------------------------------------------------

    async def enqueue(self, event: QueuedEvent) -> InvocationRecord:
        if self._writer is None:  # before the reservation: from here on, settled undoes it
            raise EventStoreUnavailable("the event queue is not open")
        backlogs = self._backlogs
        backlogs.reserve(event.function)

        def settled(ok: bool, _: Any) -> None:
            if ok:
                backlogs.joined(event.function, event.request_id, event.enqueued_at)
            else:
                backlogs.release(event.function)
        try:
            await self._write(lambda db: db.execute(
                "INSERT INTO invocations (request_id, function, function_arn, account, payload, callback_url, "
                "status, attempts, enqueued_at, due_at, traceparent) VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                (event.request_id, event.function, event.function_arn, event.account, event.payload,
                 event.callback_url, event.enqueued_at, event.enqueued_at, event.traceparent)), single=True,
                settled=settled)
        except sqlite3.IntegrityError:
            raise ResourceConflict(f"request id {event.request_id} was already accepted") from None
        self._work_due.set()
        return InvocationRecord(event.request_id, event.function_arn, event.account, EnqueuedAt=event.enqueued_at)

    async def lease(self, max_count: int, room: Room, wait: float) -> list[Delivery]:
        deadline = time.monotonic() + wait
        while True:
            self._work_due.clear()
            leased, next_due = await self._lease_once(max_count, room)
            if leased:
                return leased
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if next_due is not None:
                remaining = min(remaining, max(0.0, next_due - time.time()) + 0.001)
            try:
                await asyncio.wait_for(self._work_due.wait(), remaining)
            except TimeoutError:
                pass

    async def _lease_once(self, max_count: int, room: Room) -> tuple[list[Delivery], float | None]:
        now = time.time()
        taken: dict[str, int] = defaultdict(int)
        chosen: list[int] = []  # seqs, in due order per function
        full: set[str] = set()
        # A function with no room must not hide the events of others behind it: after the due
        # events of all functions, look at each other function's own (an index per function; a
        # scan past a busy function's backlog would cost a read of all of it at every lease).
        # The selection reads only (seq, function) on the loop; the write below takes the rows.
        rows = self._read_here("SELECT seq, function FROM invocations WHERE status = 'queued' AND due_at <= ? "
                               "ORDER BY due_at LIMIT ?", (now, max_count))
        for seq, function in rows:
            if function in full or taken[function] >= room(function):
                full.add(function)
                continue
            taken[function] += 1
            chosen.append(seq)
        if full and len(chosen) < max_count and len(rows) == max_count:
            seen = set(chosen)
            for function in [f for f in self._backlogs.functions() if f not in full]:
                want = min(max_count - len(chosen), room(function) - taken[function])
                if want <= 0:
                    continue
                more = self._read_here("SELECT seq FROM invocations WHERE status = 'queued' AND function = ? "
                                       "AND due_at <= ? ORDER BY due_at LIMIT ?",
                                       (function, now, want + taken[function]))
                for (seq,) in more:
                    if seq not in seen and taken[function] < room(function) and len(chosen) < max_count:
                        seen.add(seq)
                        taken[function] += 1
                        chosen.append(seq)
                if len(chosen) >= max_count:
                    break
        if not chosen:
            if full:
                return [], now + 0.05  # everything due is over its function's room: look again shortly
            nxt = self._read_here("SELECT MIN(due_at) FROM invocations WHERE status = 'queued'", ())
            return [], nxt[0][0] if nxt else None
        self._leases += 1
        generation = self._leases

        def run(db: sqlite3.Connection) -> list[Delivery]:
            # Only this queue's dispatcher moves a queued event to running, and no other write takes
            # one out of the queue, so each chosen event is still queued: one statement for them all.
            # The rows are read in the same transaction: the lease and what it delivers are one hop.
            db.executemany("UPDATE invocations SET status = 'running', attempts = attempts + 1, "
                           "started_at = ?, lease = ? WHERE seq = ? AND status = 'queued'",
                           [(now, generation, seq) for seq in chosen])
            marks = ",".join("?" * len(chosen))
            rows = db.execute(f"SELECT {_LEASE_COLUMNS}, lease, status FROM invocations WHERE seq IN ({marks})",
                              chosen).fetchall()
            mine = {row[0]: row for row in rows if row[10] == generation and row[11] == "running"}
            return [Delivery(QueuedEvent(request_id=row[1], function=row[2], function_arn=row[3], account=row[4],
                                         payload=row[5], callback_url=row[6], enqueued_at=row[7],
                                         traceparent=row[9]), row[8], (seq, generation))
                    for seq in chosen if (row := mine.get(seq)) is not None]

        return await self._write(run, single=True), None

    lease_expires = False  # one owner: a lease lasts until it is finished or the controller restarts

    async def touch(self, delivery: Delivery) -> None:
        return None

    async def _settle(self, delivery: Delivery, sql: str, args: tuple[Any, ...],
                      settled: Settled | None = None) -> None:
        seq, generation = delivery.token
        sql += " WHERE seq = ? AND status = 'running' AND lease = ?"
        args = (*args, seq, generation)

        def run(db: sqlite3.Connection) -> None:
            if db.execute(sql, args).rowcount != 1:
                raise LookupError(f"event {delivery.event.request_id} is not leased by this holder")

        await self._write(run, single=True, settled=settled)

    async def finish(self, delivery: Delivery, outcome: Outcome) -> None:
        if not outcome.status.finished:
            raise ValueError(f"finish needs a final status, not {outcome.status.value}")
        dead = outcome.status is not InvocationStatus.SUCCEEDED
        event, backlogs = delivery.event, self._backlogs

        def settled(ok: bool, _: Any) -> None:
            if ok:
                backlogs.left(event.function, event.request_id)
        await self._settle(
            delivery, "UPDATE invocations SET status = ?, finished_at = ?, result = ?, error = ?, log_result = ?, "
                      "dead = ?", (outcome.status.value, time.time(), outcome.result, _json_or_none(outcome.error),
                                   outcome.log_result, int(dead)), settled)

    async def retry(self, delivery: Delivery, delay: float, outcome: Outcome) -> None:
        await self._settle(
            delivery, "UPDATE invocations SET status = 'queued', due_at = ?, error = ?, log_result = ?",
            (time.time() + delay, _json_or_none(outcome.error), outcome.log_result))
        self._work_due.set()

    async def requeue(self, delivery: Delivery, delay: float) -> None:
        await self._settle(
            delivery, "UPDATE invocations SET status = 'queued', due_at = ?, attempts = attempts - 1",
            (time.time() + delay,))
        self._work_due.set()

    # ---- records and dead letters --------------------------------------------------------------

    async def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = self._db
        if db is None:
            raise EventStoreUnavailable("the event queue is not open")
        return await self._in_thread(lambda: db.execute(sql, args).fetchall())

    def _read_here(self, sql: str, args: tuple[Any, ...] | list[Any]) -> list[tuple[Any, ...]]:
        """A read of a few rows on the event loop (see the module docstring)."""
        reader = self._reader
        if reader is None:
            raise EventStoreUnavailable("the event queue is not open")
        try:
            return reader.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise EventStoreUnavailable(f"the event queue could not be read: {exc}") from exc

    async def record(self, request_id: str) -> InvocationRecord | None:
        rows = await self._read(f"SELECT {_COLUMNS} FROM invocations WHERE request_id = ?", (request_id,))
        return _record_of(rows[0]) if rows else None

    async def records(self, *, account: str, function: str | None = None,
                      status: InvocationStatus | None = None, limit: int = 50) -> list[InvocationRecord]:
        sql = f"SELECT {_COLUMNS} FROM invocations WHERE account = ?"
        args: list[Any] = [account]
        if function is not None:
            sql += " AND function = ?"
            args.append(function)
        if status is not None:
            sql += " AND status = ?"
            args.append(status.value)
        rows = await self._read(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [_record_of(row) for row in rows]

    async def dead_letters(self, *, account: str, function: str | None = None,
                           limit: int = 50) -> list[DeadLetter]:
        sql = f"SELECT {_COLUMNS} FROM invocations WHERE dead = 1 AND account = ?"
        args: list[Any] = [account]
        if function is not None:
            sql += " AND function = ?"
            args.append(function)
        rows = await self._read(sql + " ORDER BY finished_at DESC, seq DESC LIMIT ?", (*args, limit))
        return [DeadLetter(_record_of(row), _event_of(row)) for row in rows]

    async def dead_letter(self, request_id: str) -> DeadLetter | None:
        rows = await self._read(f"SELECT {_COLUMNS} FROM invocations WHERE dead = 1 AND request_id = ?",
                                (request_id,))
        return DeadLetter(_record_of(rows[0]), _event_of(rows[0])) if rows else None

    async def redrive(self, request_id: str) -> InvocationRecord | None:
        letter = await self.dead_letter(request_id)
        if letter is None:
            return None
        if self._writer is None:  # before the reservation: from here on, settled undoes it
            raise EventStoreUnavailable("the event queue is not open")
        function, backlogs = letter.event.function, self._backlogs
        backlogs.reserve(function)
        now = time.time()

        def run(db: sqlite3.Connection) -> int:
            return db.execute("UPDATE invocations SET status = 'queued', attempts = 0, dead = 0, enqueued_at = ?, "
                              "due_at = ?, started_at = NULL, finished_at = NULL, result = NULL, error = NULL, "
                              "log_result = NULL WHERE request_id = ? AND dead = 1",
                              (now, now, request_id)).rowcount

        def settled(ok: bool, changed: Any) -> None:
            if ok and changed:
                backlogs.joined(function, request_id, now)
            else:
                backlogs.release(function)  # failed, or another redrive took it first
        if not await self._write(run, single=True, settled=settled):
            return None
        self._work_due.set()
        return await self.record(request_id)

    async def delete_dead_letter(self, request_id: str) -> bool:
        changed = await self._write(lambda db: db.execute(
            "DELETE FROM invocations WHERE request_id = ? AND dead = 1", (request_id,)).rowcount, single=True)
        return bool(changed)

    async def note_callback(self, request_id: str, outcome: dict[str, Any]) -> None:
        await self._write(lambda db: db.execute("UPDATE invocations SET callback = ? WHERE request_id = ?",
                                                (json.dumps(outcome, ensure_ascii=False), request_id)),
                          single=True)

    async def depth(self) -> QueueDepth:
        # From memory: a GROUP BY over the table on the writer's thread took ~10 ms at 34k events,
        # a stall of the drain each time it was polled.
        if self._db is None:
            raise EventStoreUnavailable("the event queue is not open")
        return self._backlogs.depth()

    async def prune(self) -> int:
        cutoff = time.time() - self.record_ttl

        def run(db: sqlite3.Connection) -> int:
            gone = db.execute("DELETE FROM invocations WHERE finished_at IS NOT NULL AND finished_at < ?",
                              (cutoff,)).rowcount
            over = db.execute("SELECT COUNT(*) FROM invocations WHERE finished_at IS NOT NULL").fetchone()[0]
            over -= self.max_records
            if over > 0:
                gone += db.execute("DELETE FROM invocations WHERE seq IN (SELECT seq FROM invocations WHERE "
                                   "finished_at IS NOT NULL ORDER BY finished_at LIMIT ?)", (over,)).rowcount
            return gone

        return await self._write(run)


def _resolve(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the caller was cancelled
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _event_of(row: tuple[Any, ...]) -> QueuedEvent:
    return QueuedEvent(request_id=row[0], function=row[1], function_arn=row[2], account=row[3], payload=row[4],
                       callback_url=row[5], enqueued_at=row[8], traceparent=row[16])


def _record_of(row: tuple[Any, ...]) -> InvocationRecord:
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
