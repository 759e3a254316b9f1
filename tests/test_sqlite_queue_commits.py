"""The SQLite queue's fewer commits per event, on a real database in a temp dir: an event enqueued
while a lease waits is handed to it by the enqueue's own commit (controller/event_queue/handoff.py),
a settle waits for another write to share its commit, and while the pod is busy with synchronous
calls commits are paced (sqlite_backend.py) — what each saves, and that nothing either skips is
lost."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.event_queue.interface import Delivery, Outcome, QueuedEvent
from controller.event_queue.sqlite_backend import SQLiteEventQueue
from easyfaas.errors import ResourceConflict
from easyfaas.event_invoke import InvocationStatus

FN_A = "brn:cloud:faas:bj:0123456789abcdef0123456789abcdef:function:a"
FN_B = "brn:cloud:faas:bj:0123456789abcdef0123456789abcdef:function:b"
SUCCEEDED = Outcome(InvocationStatus.SUCCEEDED, result='"ok"')


def event(function: str = FN_A) -> QueuedEvent:
    return QueuedEvent(request_id=str(uuid.uuid4()), function=function, function_arn=function + ":$LATEST",
                       account="acct1", payload='{"n": 1}')


def any_room(_: str) -> int:
    return 100


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SQLiteEventQueue]:
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        yield q
    finally:
        await q.close()


async def waiting_lease(q: SQLiteEventQueue, room=any_room, wait: float = 10.0) -> asyncio.Task[list[Delivery]]:
    """A lease that has looked, found nothing it can take, and waits."""
    task = asyncio.get_running_loop().create_task(q.lease(5, room, wait))
    for _ in range(1000):
        if q._handoff.waiting:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the lease never waited")


async def test_an_enqueue_while_a_lease_waits_is_leased_by_its_own_commit(queue: SQLiteEventQueue) -> None:
    lease = await waiting_lease(queue)
    before = queue.commits
    ev = event()
    accepted = await queue.enqueue(ev)
    got = await lease
    assert [d.event for d in got] == [ev] and got[0].attempts == 1
    assert queue.commits - before == 1
    assert accepted.Status is InvocationStatus.RUNNING and accepted.Attempts == 1
    stored = await queue.record(ev.request_id)
    assert stored is not None and stored.Status is InvocationStatus.RUNNING and stored.Attempts == 1
    assert stored.StartedAt
    await queue.finish(got[0], SUCCEEDED)
    done = await queue.record(ev.request_id)
    assert done is not None and done.Status is InvocationStatus.SUCCEEDED and done.Attempts == 1
    assert (await queue.depth()).total == 0


async def test_no_hand_over_past_a_function_s_room(queue: SQLiteEventQueue) -> None:
    lease = await waiting_lease(queue, room=lambda fn: 0 if fn == FN_A else 1)
    a, b, b2 = event(FN_A), event(FN_B), event(FN_B)
    await queue.enqueue(a)  # no room for FN_A: stored queued, and the lease looks again
    await asyncio.sleep(0.05)
    await queue.enqueue(b)
    await queue.enqueue(b2)  # FN_B's room is one
    got = await lease
    assert [d.event for d in got] == [b]
    for ev, status in ((a, InvocationStatus.QUEUED), (b2, InvocationStatus.QUEUED), (b, InvocationStatus.RUNNING)):
        rec = await queue.record(ev.request_id)
        assert rec is not None and rec.Status is status, ev
    rest = await queue.lease(5, any_room, 2.0)
    assert {d.event.request_id for d in rest} == {a.request_id, b2.request_id}


async def test_a_duplicate_handed_over_is_refused_and_not_delivered(queue: SQLiteEventQueue) -> None:
    ev = event()
    await queue.enqueue(ev)
    [first] = await queue.lease(5, any_room, 2.0)
    lease = await waiting_lease(queue, wait=0.5)
    with pytest.raises(ResourceConflict):
        await queue.enqueue(ev)
    assert await lease == []
    await queue.finish(first, SUCCEEDED)
    assert (await queue.depth()).total == 0


async def test_an_event_handed_over_that_no_lease_took_goes_back_without_counting(tmp_path: Path) -> None:
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    ev = event()
    try:
        lease = await waiting_lease(q)
        enqueue = asyncio.get_running_loop().create_task(q.enqueue(ev))
        await asyncio.sleep(0)  # the enqueue has taken its hand-off
        lease.cancel()
        await asyncio.gather(lease, return_exceptions=True)
        await enqueue
    finally:
        await q.close()
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        rec = await q.record(ev.request_id)
        assert rec is not None and rec.Status is InvocationStatus.QUEUED and rec.Attempts == 0
        [again] = await q.lease(5, any_room, 2.0)
        assert again.event == ev and again.attempts == 1
    finally:
        await q.close()


async def test_a_handed_over_event_running_at_a_crash_comes_back_counted(tmp_path: Path) -> None:
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    ev = event()
    try:
        lease = await waiting_lease(q)
        await q.enqueue(ev)
        [d] = await lease
        assert d.event == ev
    finally:
        await q.close()  # gone without finishing: the holder "crashed"
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        [again] = await q.lease(5, any_room, 5.0)
        assert again.event.request_id == ev.request_id and again.attempts == 2
    finally:
        await q.close()


async def test_a_settle_waits_for_the_next_write_and_shares_its_commit(tmp_path: Path) -> None:
    q = SQLiteEventQueue(tmp_path, settle_delay=60.0)  # only another write ends a settle's wait
    await q.start()
    a, b, c = event(), event(), event()
    try:
        await q.enqueue(a)
        await q.enqueue(b)
        got = {d.event.request_id: d for d in await q.lease(5, any_room, 2.0)}
        lease = await waiting_lease(q, wait=30.0)  # nothing else to lease: settles wait for company
        before = q.commits
        finishing = asyncio.get_running_loop().create_task(q.finish(got[a.request_id], SUCCEEDED))
        retrying = asyncio.get_running_loop().create_task(
            q.retry(got[b.request_id], 60.0, Outcome(InvocationStatus.FAILED, error={"errorType": "E"})))
        await asyncio.sleep(0.2)
        assert not finishing.done() and not retrying.done()
        assert q.commits == before
        await q.enqueue(c)
        await asyncio.gather(finishing, retrying)
        assert q.commits - before == 1
        assert [d.event for d in await lease] == [c]  # handed over by that same commit
        done = await q.record(a.request_id)
        assert done is not None and done.Status is InvocationStatus.SUCCEEDED and done.FinishedAt
        again = await q.record(b.request_id)
        assert again is not None and again.Status is InvocationStatus.QUEUED and again.Attempts == 1
    finally:
        await q.close()


async def test_close_commits_the_settles_still_waiting(tmp_path: Path) -> None:
    q = SQLiteEventQueue(tmp_path, settle_delay=60.0)
    await q.start()
    ev = event()
    try:
        await q.enqueue(ev)
        [d] = await q.lease(5, any_room, 2.0)
        lease = await waiting_lease(q, wait=30.0)
        finishing = asyncio.get_running_loop().create_task(q.finish(d, SUCCEEDED))
        await asyncio.sleep(0.05)
        assert not finishing.done()
        lease.cancel()
        await asyncio.gather(lease, return_exceptions=True)
    finally:
        await q.close()
    await finishing  # committed by the close, not failed
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        rec = await q.record(ev.request_id)
        assert rec is not None and rec.Status is InvocationStatus.SUCCEEDED
        assert await q.lease(5, any_room, 0.3) == []
    finally:
        await q.close()


async def test_with_events_to_lease_a_settle_commits_at_once(tmp_path: Path) -> None:
    q = SQLiteEventQueue(tmp_path, settle_delay=60.0)
    await q.start()
    try:
        a, b = event(), event()
        await q.enqueue(a)
        await q.enqueue(b)
        [first] = await q.lease(1, any_room, 2.0)  # b is still queued: the dispatcher does not wait
        await asyncio.wait_for(q.finish(first, SUCCEEDED), 30.0)  # far sooner than the 60 s delay
        done = await q.record(first.event.request_id)
        assert done is not None and done.Status is InvocationStatus.SUCCEEDED
    finally:
        await q.close()


class Busy:
    """The pod's busy signal, set by the test."""

    def __init__(self, busy: bool = True) -> None:
        self.busy = busy

    def __call__(self) -> bool:
        return self.busy


async def test_while_the_pod_is_busy_writes_share_paced_commits(tmp_path: Path) -> None:
    busy = Busy()
    q = SQLiteEventQueue(tmp_path, busy=busy, busy_commit_interval=1.0)
    await q.start()
    try:
        first = event()
        before = q.commits
        await asyncio.wait_for(q.enqueue(first), 0.9)  # the last commit is old: it goes at once
        assert q.commits - before == 1
        later = [event() for _ in range(3)]
        tasks = [asyncio.get_running_loop().create_task(q.enqueue(ev)) for ev in later]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in tasks) and q.commits - before == 1  # waiting for the next commit
        await asyncio.wait_for(asyncio.gather(*tasks), 10.0)
        assert q.commits - before == 2  # the three in one
        for ev in [first, *later]:
            rec = await q.record(ev.request_id)
            assert rec is not None and rec.Status is InvocationStatus.QUEUED
        got = await q.lease(10, any_room, 2.0)
        assert sorted(d.event.request_id for d in got) == sorted(ev.request_id for ev in [first, *later])
    finally:
        await q.close()


async def test_when_the_pod_is_not_busy_each_write_commits_at_once(tmp_path: Path) -> None:
    busy = Busy(False)
    q = SQLiteEventQueue(tmp_path, busy=busy, busy_commit_interval=60.0)
    await q.start()
    try:
        before = q.commits
        for _ in range(3):
            await asyncio.wait_for(q.enqueue(event()), 30.0)  # far sooner than the 60 s interval
        assert q.commits - before == 3
        busy.busy = True
        waiting = asyncio.get_running_loop().create_task(q.enqueue(event()))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # busy now, and the last commit was just made
    finally:
        await q.close()
    await waiting  # the close commits it rather than failing it


async def test_a_paced_write_survives_the_close_that_commits_it(tmp_path: Path) -> None:
    q = SQLiteEventQueue(tmp_path, busy=Busy(), busy_commit_interval=60.0)
    await q.start()
    first, paced = event(), event()
    try:
        await q.enqueue(first)
        waiting = asyncio.get_running_loop().create_task(q.enqueue(paced))
        await asyncio.sleep(0.1)
        assert not waiting.done()
    finally:
        await q.close()
    accepted = await waiting
    assert accepted.RequestId == paced.request_id
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    try:
        rec = await q.record(paced.request_id)
        assert rec is not None and rec.Status is InvocationStatus.QUEUED
    finally:
        await q.close()


async def test_commits_reach_the_database_file_by_checkpoints_of_the_queue_s_own(tmp_path: Path) -> None:
    """No automatic checkpoint on the loop's connection: the queue's thread checkpoints about once a
    second, so the database file itself, without its WAL, holds what was committed before."""
    q = SQLiteEventQueue(tmp_path)
    await q.start()
    early = [event() for _ in range(5)]
    try:
        for ev in early:
            await q.enqueue(ev)
        await asyncio.sleep(1.2)
        await q.enqueue(event())  # its sync is past the interval: it checkpoints
        copy = tmp_path / "copy"
        copy.mkdir()
        (copy / "db.sqlite3").write_bytes(q.path.read_bytes())  # the database file only, no -wal
        db = sqlite3.connect(copy / "db.sqlite3")
        try:
            ids = {row[0] for row in db.execute("SELECT request_id FROM invocations")}
        finally:
            db.close()
        assert {ev.request_id for ev in early} <= ids
        assert Path(f"{q.path}-wal").exists()
    finally:
        await q.close()
    assert not Path(f"{q.path}-wal").exists()  # the last connection's close checkpointed and removed it
