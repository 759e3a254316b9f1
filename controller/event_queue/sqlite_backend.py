"""The embedded event queue: one SQLite database (WAL) in the controller's state directory, owned
by one controller.

Every write goes through one writer task that runs all writes pending at that moment in one
transaction (a group commit), on the event loop; the commit is then made durable by an fdatasync
of the WAL on the queue's one thread, and only then does any write of it return: an enqueue
returns only after its commit is on disk, but concurrent enqueues share the sync. The statements
run on the loop because on a thread each of them (BEGIN, every write, COMMIT) takes the GIL back
from the loop once it returns, and beside a saturated sync path each such return is a forced
switch that costs the loop far more than the statement's tens of µs; the thread now takes it back
twice per commit (woken, synced). Its sync also checkpoints the WAL about once a second
(``sqlite_schema.open_database``: no automatic checkpoint on the loop). A prune, which may touch
every record, commits on the thread instead. Between a commit and its sync, readers may see rows
that a power loss would take back; nothing is acted on before its own write is durable.

The reads of a few small columns that every event would otherwise pay an executor hop and a loop
wake-up for (the dispatcher's lease selection, the next due time) run on the event loop through a
query-only connection: WAL lets it read the last commit while a write is under way, in tens of
µs. Records and listings, which may carry payloads and results, are read on the thread through a
query-only connection of their own. The depth and the enqueue bounds are kept in memory
(``backlog.Backlogs``), moved as each commit is delivered. A failed commit (disk full) rolls the
whole batch back and fails each of its writes: nothing half-written. At start, events a crashed
predecessor left ``running`` are queued again with their attempt counted.

Fewer commits per event, with nothing made durable later than before it is acted on:

* an event enqueued while the dispatcher waits for work is stored already leased by its
  enqueue's commit and handed to the waiting lease (``controller/event_queue/handoff.py``): one
  commit for the enqueue and the lease;
* a settle (finish, retry, requeue) made while the dispatcher waits for work, which no caller
  waits on to answer anyone, waits up to ``settle_delay`` (50 ms) for another write to share its
  commit; an enqueue or a lease goes at once and takes any waiting settle along (with a backlog,
  settles commit at once: the drain keeps the thread committing while the loop runs events). The settle still returns only after its commit, and
  the worker does nothing with the outcome (callbacks, destinations) before; ``FinishedAt`` is
  the time the run ended. So at a steady stream an event costs one commit (its enqueue with its
  lease, carrying the previous event's settle) instead of three.
* while the pod is busy with synchronous calls (``busy``, told by the controller: several in
  flight), commits start at most every ``busy_commit_interval`` (50 ms); a write made sooner after
  the last one waits for the next and shares it. Each commit costs its sync and the thread's two
  returns of the GIL from the busy event loop. A write made when
  the last commit is older than the interval still goes at once: a sparse stream (a schedule)
  waits for nothing. The trade: under load, up to 50 ms of an enqueue's latency for fewer syncs.

The module is over 600 lines on purpose: the group commit, the hand-off and the queue
operations share the writer's private state (pending writes, leases, the backlog); the schema and
the row mapping are in ``sqlite_schema.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog

from controller.event_queue.backlog import Backlogs
from controller.event_queue.handoff import HandOff
from controller.event_queue.interface import DeadLetter, Delivery, Outcome, QueueDepth, QueuedEvent, Room
from controller.event_queue.sqlite_schema import (COLUMNS, INSERT, LEASE_COLUMNS, event_of, json_or_none,
                                                  open_database, record_of)
from easyfaas.errors import ResourceConflict
from easyfaas.event_invoke import EventStoreUnavailable, InvocationRecord, InvocationStatus

log = structlog.get_logger(__name__)

T = TypeVar("T")
DB_NAME = "event-queue.sqlite3"
SETTLE_DELAY = 0.05
BUSY_COMMIT_INTERVAL = 0.05
CLOSE_FLUSH_TIMEOUT = 10.0
CHECKPOINT_INTERVAL = 1.0


Settled = Callable[[bool, Any], None]
"""Told on the event loop how a write ended, (True, its value) once committed, (False, the error)
otherwise, even when its caller is gone (cancelled): the backlog follows the database."""


class _Write:
    __slots__ = ("run", "future", "single", "alone", "settled", "heavy")

    def __init__(self, run: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], single: bool,
                 settled: Settled | None, alone: bool = False, heavy: bool = False) -> None:
        self.run = run
        self.future = future
        # One statement: SQLite undoes a failed statement by itself, so it needs no savepoint.
        self.single = single
        # One execute of one statement: as the only write of its batch it commits by itself.
        self.alone = alone
        self.settled = settled
        # May take long (a prune): its batch commits on the thread, not on the event loop.
        self.heavy = heavy

    def fail(self, error: BaseException) -> None:
        if self.settled is not None:
            self.settled(False, error)
        if not self.future.done():
            self.future.set_exception(error)


class SQLiteEventQueue:
    """The :class:`~controller.event_queue.interface.EventQueue` on SQLite."""

    def __init__(self, directory: str | os.PathLike[str], *, max_queued_per_function: int = 10000,
                 max_queued: int = 100000, record_ttl: float = 86400.0, max_records: int = 100000,
                 max_batch: int = 512, settle_delay: float = SETTLE_DELAY,
                 busy: Callable[[], bool] | None = None, busy_commit_interval: float = BUSY_COMMIT_INTERVAL) -> None:
        self.path = Path(directory) / DB_NAME
        self.max_queued_per_function = max_queued_per_function
        self.max_queued = max_queued
        self.record_ttl = record_ttl
        self.max_records = max_records
        self.max_batch = max_batch
        self.settle_delay = settle_delay
        self.busy = busy  # whether the pod is busy with synchronous calls now: commits are paced
        self.busy_commit_interval = busy_commit_interval
        # The one thread that touches the writer's connection, fed through a SimpleQueue: a
        # ThreadPoolExecutor's submit (its idle semaphore, the future chaining) costs the loop more
        # per hop than the read or write it carries at a low rate.
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any],
                                            asyncio.AbstractEventLoop] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None  # the writer's: the writer task's, or the thread's while it awaits
        self._reader: sqlite3.Connection | None = None  # query-only, used from the event loop only
        self._records_db: sqlite3.Connection | None = None  # query-only, used on the thread only
        self._wal_fd: int | None = None  # the WAL, for its fdatasync (the thread's)
        self._checkpoint_by = 0.0
        self._pending: list[_Write] = []
        self._wake_writer = asyncio.Event()
        self._work_due = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # Wakes the writer for the writes that wait (settles for company, any write for the next
        # paced commit), at _late_at (loop time).
        self._late: asyncio.TimerHandle | None = None
        self._late_at = 0.0
        self._last_commit = -1e9  # loop time the last commit started
        self._closing = False
        self._handoff = HandOff()
        # Queued or running events per function: the bounds and the depth without a query.
        self._backlogs = Backlogs(max_queued_per_function, max_queued)
        # Events with status queued: with none, a lease needs no look at the table (after a
        # hand-off, the dispatcher asks again at once). A look at least every second regardless.
        self._queued = 0
        self._look_by = 0.0
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
        self._queued = self._backlogs.reserved  # whatever was running is queued again
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._work_due.set()
        log.info("event_queue_opened", backend="sqlite", path=str(self.path), queued=self._backlogs.reserved,
                 recovered_running=recovered)

    def _open(self) -> tuple[int, list[tuple[str, str, float]]]:
        self._db, recovered, active = open_database(self.path)
        records = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        records.execute("PRAGMA query_only=1")
        self._records_db = records
        self._make_durable()  # the recovery's update
        return recovered, active

    def _make_durable(self) -> None:
        """On the thread: what every commit so far wrote to the WAL is on disk; about once a second,
        a checkpoint (SQLite syncs the WAL before it and the database after)."""
        fd = self._wal_fd
        if fd is None:
            fd = self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(fd)
        now = time.monotonic()
        if now >= self._checkpoint_by and self._db is not None:
            self._checkpoint_by = now + CHECKPOINT_INTERVAL
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close_connections(self, db: sqlite3.Connection) -> None:
        if self._records_db is not None:
            records, self._records_db = self._records_db, None
            records.close()
        db.close()  # the last writer: SQLite checkpoints (synced) and removes the WAL
        if self._wal_fd is not None:
            fd, self._wal_fd = self._wal_fd, None
            os.close(fd)

    async def close(self) -> None:
        writer = self._writer
        if writer is not None:
            # Events handed over that no lease took go back without counting; then what is
            # pending (settles waiting for company among them) is committed before the writer ends.
            handed = await self._handoff.collect()
            if handed:
                with contextlib.suppress(Exception):
                    await self._put_back(handed)
            self._closing = True
            self._wake_writer.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), CLOSE_FLUSH_TIMEOUT)
            self._writer = None
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if self._late is not None:
            self._late.cancel()
            self._late = None
        pending, self._pending = self._pending, []
        for write in pending:
            write.fail(EventStoreUnavailable("the event queue is closing"))
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()
        if self._db is not None:
            db, self._db = self._db, None
            await self._in_thread(self._close_connections, db)
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
                     defer: bool = False, settled: Settled | None = None, alone: bool = False,
                     heavy: bool = False) -> T:
        """Run ``run`` in the next group commit; ``single``: it runs one statement (or raises before);
        ``alone``: one execute of one statement (an executemany is many); ``defer``: the commit may
        wait up to ``settle_delay`` for other writes to share it.

        ``heavy``: it may take long (its batch commits on the thread).

        ``settled`` is told how it ended (see :data:`Settled`); not when this raises at once.
        """
        return await self._submit(run, single, defer, settled, alone, heavy)

    def _is_open(self) -> bool:
        return self._writer is not None and not self._closing

    def _submit(self, run: Callable[[sqlite3.Connection], T], single: bool, defer: bool = False,
                settled: Settled | None = None, alone: bool = False, heavy: bool = False) -> asyncio.Future[T]:
        if not self._is_open():
            raise EventStoreUnavailable("the event queue is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Write(run, future, single, settled, alone, heavy))
        if defer:
            self._wake_at(loop, loop.time() + self.settle_delay)
        elif (paced := self._next_commit_at(loop)) is not None:
            self._wake_at(loop, paced)
        else:
            self._wake_writer.set()
        return future

    def _next_commit_at(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """When the next commit may start while the pod is busy; None: now."""
        if self._closing or self.busy is None:
            return None
        at = self._last_commit + self.busy_commit_interval
        if at <= loop.time() + 0.001 or not self.busy():  # a timer may fire up to 1 ms early (libuv)
            return None
        return at

    def _wake_at(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """The writer wakes by ``when`` (loop time) at the latest."""
        if self._late is not None:
            if self._late_at <= when:
                return
            self._late.cancel()
        self._late, self._late_at = loop.call_at(when, self._wake_late), when

    def _wake_late(self) -> None:
        self._late = None
        self._wake_writer.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            if self._late is not None:  # what waited goes with this commit
                self._late.cancel()
                self._late = None
            loop = asyncio.get_running_loop()
            while self._pending:
                if (paced := self._next_commit_at(loop)) is not None:
                    self._wake_at(loop, paced)  # what came during the last commit waits for the next
                    break
                self._last_commit = loop.time()
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                try:
                    if any(write.heavy for write in batch):
                        results = await self._in_thread(self._commit, batch)
                    else:
                        results = self._commit(batch)
                except sqlite3.Error as exc:
                    log.error("event_queue_commit_failed", error=str(exc), writes=len(batch))
                    err = EventStoreUnavailable(f"the event queue could not store the change: {exc}")
                    for write in batch:
                        write.fail(err)
                    continue
                self.commits += 1
                try:
                    await self._in_thread(self._make_durable)
                except (OSError, sqlite3.Error) as exc:
                    # Committed, but whether it is on disk is unknown: the backlog follows the
                    # database, and each caller hears that its write is not known to be stored.
                    log.error("event_queue_sync_failed", error=str(exc), writes=len(batch))
                    failed: BaseException | None = EventStoreUnavailable(
                        f"the event queue could not make the change durable: {exc}")
                else:
                    failed = None
                for write, (ok, value) in zip(batch, results):
                    if write.settled is not None:
                        write.settled(ok, value)
                    if write.future.done():
                        continue
                    if failed is not None:
                        write.future.set_exception(failed)
                    elif ok:
                        write.future.set_result(value)
                    else:
                        write.future.set_exception(value)
            if self._closing:
                return

    def _commit(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        db = self._db
        assert db is not None
        if len(batch) == 1 and batch[0].alone:
            # One statement commits by itself (autocommit): one statement run instead of three.
            try:
                return [(True, batch[0].run(db))]
            except (sqlite3.IntegrityError, LookupError, ValueError) as exc:
                return [(False, exc)]
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
        if not self._is_open():  # before the reservation: from here on, the write's outcome undoes it
            raise EventStoreUnavailable("the event queue is not open")
        self._backlogs.reserve(event.function)
        settled = partial(self._enqueue_settled, event)
        if self._handoff.reserve(event.function):
            return await self._enqueue_leased(event, settled)
        row = (event.request_id, event.function, event.function_arn, event.account, event.payload,
               event.callback_url, "queued", 0, event.enqueued_at, event.enqueued_at, event.traceparent, None, None)
        try:
            await self._write(lambda db: db.execute(INSERT, row), single=True, settled=settled, alone=True)
        except sqlite3.IntegrityError:
            raise ResourceConflict(f"request id {event.request_id} was already accepted") from None
        self._queued += 1
        self._wake_dispatcher()
        return InvocationRecord(event.request_id, event.function_arn, event.account, EnqueuedAt=event.enqueued_at)

    def _enqueue_settled(self, event: QueuedEvent, ok: bool, _: Any) -> None:
        if ok:
            self._backlogs.joined(event.function, event.request_id, event.enqueued_at)
        else:
            self._backlogs.release(event.function)

    async def _enqueue_leased(self, event: QueuedEvent, settled: Settled) -> InvocationRecord:
        """The enqueue of an event handed to the waiting lease: stored ``running`` (see handoff.py)."""
        self._leases += 1
        generation, now = self._leases, time.time()
        row = (event.request_id, event.function, event.function_arn, event.account, event.payload,
               event.callback_url, "running", 1, event.enqueued_at, event.enqueued_at, event.traceparent, now,
               generation)
        try:
            future = self._submit(lambda db: db.execute(INSERT, row).lastrowid, single=True, settled=settled,
                                  alone=True)
        except BaseException:
            self._handoff.delivered(None)
            self._backlogs.release(event.function)
            raise
        # The outcome is the hand-off's whether or not this caller is still waiting for it: a row
        # stored running must reach the lease (or be put back), one not stored must not count.
        future.add_done_callback(partial(self._handed_over, event, generation))
        try:
            await asyncio.shield(future)
        except sqlite3.IntegrityError:
            raise ResourceConflict(f"request id {event.request_id} was already accepted") from None
        return InvocationRecord(event.request_id, event.function_arn, event.account, InvocationStatus.RUNNING,
                                Attempts=1, EnqueuedAt=event.enqueued_at, StartedAt=now)

    def _handed_over(self, event: QueuedEvent, generation: int, future: asyncio.Future[int]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._handoff.delivered(None)  # the backlog was told by the write's outcome
            return
        self._handoff.delivered(Delivery(event, 1, (future.result(), generation)))
        self._work_due.set()  # the waiting lease collects it

    def _wake_dispatcher(self) -> None:
        """Something may be due now: the lease looks at the queue again, and hands nothing over meanwhile."""
        self._handoff.stop()
        self._work_due.set()

    async def _put_back(self, deliveries: list[Delivery]) -> None:
        """Handed-over events no lease took: queued again, their attempt not counted."""
        args = [(seq, generation) for seq, generation in (d.token for d in deliveries)]
        await self._write(lambda db: db.executemany(
            "UPDATE invocations SET status = 'queued', attempts = attempts - 1, started_at = NULL, lease = NULL "
            "WHERE seq = ? AND status = 'running' AND lease = ?", args))
        self._queued += len(args)

    async def lease(self, max_count: int, room: Room, wait: float) -> list[Delivery]:
        deadline = time.monotonic() + wait
        while True:
            handed = self._handoff.take()  # left by a lease that was cancelled while they were stored
            if handed:
                return handed
            self._work_due.clear()
            leased, next_due, blocked = await self._lease_once(max_count, room)
            if leased:
                return leased
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if next_due is not None:
                remaining = min(remaining, max(0.0, next_due - time.time()) + 0.001)
            self._handoff.open(max_count, room, frozenset(blocked), time.time() + remaining)
            try:
                await asyncio.wait_for(self._work_due.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self._handoff.stop()
            handed = await self._handoff.collect()
            if handed:
                return handed

    async def _lease_once(self, max_count: int, room: Room) -> tuple[list[Delivery], float | None, set[str]]:
        if self._queued <= 0 and time.monotonic() < self._look_by:
            return [], None, set()
        self._look_by = time.monotonic() + 1.0
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
                return [], now + 0.05, full  # everything due is over its function's room: look again shortly
            nxt = self._read_here("SELECT MIN(due_at) FROM invocations WHERE status = 'queued'", ())
            return [], nxt[0][0] if nxt else None, full
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
            rows = db.execute(f"SELECT {LEASE_COLUMNS}, lease, status FROM invocations WHERE seq IN ({marks})",
                              chosen).fetchall()
            mine = {row[0]: row for row in rows if row[10] == generation and row[11] == "running"}
            return [Delivery(QueuedEvent(request_id=row[1], function=row[2], function_arn=row[3], account=row[4],
                                         payload=row[5], callback_url=row[6], enqueued_at=row[7],
                                         traceparent=row[9]), row[8], (seq, generation))
                    for seq in chosen if (row := mine.get(seq)) is not None]

        leased = await self._write(run, single=True)
        self._queued -= len(leased)
        return leased, None, full

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

        # Deferred only while the dispatcher waits for work: with events to lease, the lease's commit
        # would wait for the settles' (and the workers for the lease), where committing each at
        # once lets the thread commit while the loop runs events.
        await self._write(run, single=True, defer=self._handoff.waiting, settled=settled, alone=True)

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
                      "dead = ?", (outcome.status.value, time.time(), outcome.result, json_or_none(outcome.error),
                                   outcome.log_result, int(dead)), settled)

    async def retry(self, delivery: Delivery, delay: float, outcome: Outcome) -> None:
        await self._settle(
            delivery, "UPDATE invocations SET status = 'queued', due_at = ?, error = ?, log_result = ?",
            (time.time() + delay, json_or_none(outcome.error), outcome.log_result))
        self._queued += 1
        self._wake_dispatcher()

    async def requeue(self, delivery: Delivery, delay: float) -> None:
        await self._settle(
            delivery, "UPDATE invocations SET status = 'queued', due_at = ?, attempts = attempts - 1",
            (time.time() + delay,))
        self._queued += 1
        self._wake_dispatcher()

    # ---- records and dead letters --------------------------------------------------------------

    async def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = self._records_db
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
        rows = await self._read(f"SELECT {COLUMNS} FROM invocations WHERE request_id = ?", (request_id,))
        return record_of(rows[0]) if rows else None

    async def records(self, *, account: str, function: str | None = None,
                      status: InvocationStatus | None = None, limit: int = 50) -> list[InvocationRecord]:
        sql = f"SELECT {COLUMNS} FROM invocations WHERE account = ?"
        args: list[Any] = [account]
        if function is not None:
            sql += " AND function = ?"
            args.append(function)
        if status is not None:
            sql += " AND status = ?"
            args.append(status.value)
        rows = await self._read(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [record_of(row) for row in rows]

    async def dead_letters(self, *, account: str, function: str | None = None,
                           limit: int = 50) -> list[DeadLetter]:
        sql = f"SELECT {COLUMNS} FROM invocations WHERE dead = 1 AND account = ?"
        args: list[Any] = [account]
        if function is not None:
            sql += " AND function = ?"
            args.append(function)
        rows = await self._read(sql + " ORDER BY finished_at DESC, seq DESC LIMIT ?", (*args, limit))
        return [DeadLetter(record_of(row), event_of(row)) for row in rows]

    async def dead_letter(self, request_id: str) -> DeadLetter | None:
        rows = await self._read(f"SELECT {COLUMNS} FROM invocations WHERE dead = 1 AND request_id = ?",
                                (request_id,))
        return DeadLetter(record_of(rows[0]), event_of(rows[0])) if rows else None

    async def redrive(self, request_id: str) -> InvocationRecord | None:
        letter = await self.dead_letter(request_id)
        if letter is None:
            return None
        if not self._is_open():  # before the reservation: from here on, the write's outcome undoes it
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
        if not await self._write(run, single=True, settled=settled, alone=True):
            return None
        # The record as redriven, read before the dispatcher is told: it may lease it at once.
        record = await self.record(request_id)
        self._queued += 1
        self._wake_dispatcher()
        return record

    async def delete_dead_letter(self, request_id: str) -> bool:
        changed = await self._write(lambda db: db.execute(
            "DELETE FROM invocations WHERE request_id = ? AND dead = 1", (request_id,)).rowcount, single=True,
            alone=True)
        return bool(changed)

    async def note_callback(self, request_id: str, outcome: dict[str, Any]) -> None:
        await self._write(lambda db: db.execute("UPDATE invocations SET callback = ? WHERE request_id = ?",
                                                (json.dumps(outcome, ensure_ascii=False), request_id)),
                          single=True, alone=True)

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

        return await self._write(run, heavy=True)


def _resolve(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the caller was cancelled
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
