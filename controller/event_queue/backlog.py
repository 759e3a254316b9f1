"""The embedded queue's backlog in memory (``sqlite_backend.SQLiteEventQueue``): per function, the
events that are queued or running, so that the enqueue bounds and the depth report
(``GET /v1/event-queue``, the ``easyfaas_async_queue_*`` gauges) need no query.

An event is *reserved* from the moment its enqueue (or redrive) checks the bounds until its write
fails, and a *member* from the moment that write commits until the commit that finishes it: the
bounds count reservations (an enqueue under way takes room), the depth counts members (what the
database holds). The owner calls :meth:`Backlogs.joined` and :meth:`Backlogs.left` as each commit
is delivered, so the figures are the database's at every step.
"""

from __future__ import annotations

import heapq
import time

from controller.event_queue.interface import FunctionDepth, QueueDepth
from easyfaas.event_invoke import EventQueueFull


class _Backlog:
    __slots__ = ("reserved", "members", "heap")

    def __init__(self) -> None:
        self.reserved = 0  # members plus writes under way that would add one
        self.members: dict[str, float] = {}  # request id → enqueued_at
        # (enqueued_at, request id), oldest first. Lazy: an entry whose event left (or came back
        # with another time: a redrive) is dropped when it reaches the top, or at a compaction.
        self.heap: list[tuple[float, str]] = []

    def add(self, request_id: str, enqueued_at: float) -> None:
        self.members[request_id] = enqueued_at
        heapq.heappush(self.heap, (enqueued_at, request_id))
        if len(self.heap) > 2 * len(self.members) + 64:
            # Stale entries behind a long-lived oldest event never reach the top: rebuild.
            self.heap = [(at, rid) for rid, at in self.members.items()]
            heapq.heapify(self.heap)

    def oldest(self) -> float | None:
        heap, members = self.heap, self.members
        while heap and members.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


class Backlogs:
    """Queued or running events per function (its unqualified BRN), with the bounds on them."""

    def __init__(self, max_per_function: int, max_total: int) -> None:
        self.max_per_function = max_per_function
        self.max_total = max_total
        self._by_function: dict[str, _Backlog] = {}
        self.reserved = 0

    def functions(self) -> list[str]:
        """The functions with an event queued, running or on its way in."""
        return list(self._by_function)

    def reserve(self, function: str) -> None:
        """Room for one more event of ``function``, or EventQueueFull."""
        if self.reserved >= self.max_total:
            raise EventQueueFull(f"{self.reserved} asynchronous invocations are queued: the limit is "
                                 f"{self.max_total}")
        backlog = self._by_function.get(function)
        reserved = backlog.reserved if backlog is not None else 0
        if reserved >= self.max_per_function:
            raise EventQueueFull(f"{reserved} asynchronous invocations of {function} are queued: "
                                 f"the limit is {self.max_per_function}")
        if backlog is None:
            backlog = self._by_function[function] = _Backlog()
        backlog.reserved += 1
        self.reserved += 1

    def release(self, function: str) -> None:
        """A reservation whose write did not add the event (it failed, or found nothing to change)."""
        backlog = self._by_function[function]
        backlog.reserved -= 1
        self.reserved -= 1
        if backlog.reserved <= 0:
            del self._by_function[function]

    def joined(self, function: str, request_id: str, enqueued_at: float) -> None:
        """A reserved event's write committed: it is in the queue."""
        self._by_function[function].add(request_id, enqueued_at)

    def left(self, function: str, request_id: str) -> None:
        """A member's finish committed: it is out of the queue (and its reservation ends)."""
        backlog = self._by_function.get(function)
        if backlog is None or backlog.members.pop(request_id, None) is None:
            return  # not a member: nothing to undo
        self.release(function)

    def restore(self, members: list[tuple[str, str, float]]) -> None:
        """At start: the (function, request id, enqueued_at) of every event the database holds queued
        or running."""
        # Counted whatever the bounds say now: they may have been lowered since.
        for function, request_id, enqueued_at in members:
            backlog = self._by_function.get(function)
            if backlog is None:
                backlog = self._by_function[function] = _Backlog()
            backlog.reserved += 1
            self.reserved += 1
            backlog.add(request_id, enqueued_at)

    def depth(self, now: float | None = None) -> QueueDepth:
        now = time.time() if now is None else now
        functions: dict[str, FunctionDepth] = {}
        for function, backlog in self._by_function.items():
            oldest = backlog.oldest()
            if oldest is not None:
                functions[function] = FunctionDepth(len(backlog.members), max(0.0, now - oldest))
        return QueueDepth(sum(d.queued for d in functions.values()), functions)
