"""controller/event_queue/backlog.py: the SQLite queue's in-memory backlog on its own (the queue
around it is tests/test_event_queue_contract.py)."""

from __future__ import annotations

import pytest

from controller.event_queue.backlog import Backlogs
from easyfaas.event_invoke import EventQueueFull


def test_the_oldest_stays_exact_while_younger_events_come_and_go() -> None:
    b = Backlogs(max_per_function=10, max_total=10)
    b.reserve("f")
    b.joined("f", "old", 100.0)
    for i in range(5000):  # many more than the heap keeps stale entries for
        b.reserve("f")
        b.joined("f", f"e{i}", 200.0 + i)
        b.left("f", f"e{i}")
    depth = b.depth(now=150.0)
    assert (depth.total, depth.functions["f"].queued, depth.functions["f"].oldest_age) == (1, 1, 50.0)
    assert len(b._by_function["f"].heap) < 200  # compacted, not 5001 entries
    b.left("f", "old")
    assert b.depth().total == 0 and b.functions() == []


def test_a_redriven_event_is_as_old_as_its_redrive() -> None:
    b = Backlogs(max_per_function=10, max_total=10)
    for rid, at in (("a", 10.0), ("b", 20.0)):
        b.reserve("f")
        b.joined("f", rid, at)
    b.left("f", "a")     # dead-lettered
    b.reserve("f")
    b.joined("f", "a", 30.0)  # redriven: enqueued again now
    assert b.depth(now=40.0).functions["f"].oldest_age == 20.0  # b, not a's first time
    b.left("f", "b")
    assert b.depth(now=40.0).functions["f"].oldest_age == 10.0


def test_bounds_count_reservations_and_a_failed_write_gives_its_room_back() -> None:
    b = Backlogs(max_per_function=2, max_total=3)
    b.reserve("f")
    b.reserve("f")  # under way, not yet committed: not in the depth, but it takes room
    assert b.depth().total == 0
    with pytest.raises(EventQueueFull, match="of f"):
        b.reserve("f")
    b.release("f")  # its write failed
    b.reserve("f")
    b.reserve("g")
    with pytest.raises(EventQueueFull, match="3 asynchronous"):
        b.reserve("h")
    assert "h" not in b.functions()  # a refusal leaves nothing behind


def test_restore_counts_what_is_stored_even_over_lowered_bounds() -> None:
    b = Backlogs(max_per_function=1, max_total=1)
    b.restore([("f", "a", 1.0), ("f", "b", 2.0)])
    depth = b.depth(now=3.0)
    assert (depth.total, depth.functions["f"].oldest_age) == (2, 2.0)
    with pytest.raises(EventQueueFull):
        b.reserve("f")
