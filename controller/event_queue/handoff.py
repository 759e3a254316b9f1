"""The SQLite queue's hand-off: an event enqueued while the dispatcher waits in ``lease`` for work
is stored already leased (``running``, its first attempt counted) by its enqueue's own commit and
handed to that waiting lease, so that the lease is not a commit of its own.

The stored row is what a lease commit would have left: a restart finds the event ``running`` and
queues it again with the attempt counted, as after any lease. Events handed over but never taken
(the dispatcher stopped meanwhile) go back to the queue without counting, as prefetched ones do
(``controller/event_queue/workers.py``).

Hand-offs are open only while a lease waits, that is, after its last look found nothing it could
take, and only until the time it would look again: so a hand-off takes nothing ahead of an event
that lease would have chosen. Any other change that may make an event due (a retry, a requeue, a
redrive, an enqueue not handed over) closes them, and the lease looks again. ``room`` is asked as
the lease asks it; what one wait was handed counts against it and against the lease's count.
"""

from __future__ import annotations

import asyncio
import time

from controller.event_queue.interface import Delivery, Room


class HandOff:
    def __init__(self) -> None:
        self._room: Room | None = None  # while a lease waits
        self._left = 0
        self._until = 0.0
        self._blocked: frozenset[str] = frozenset()
        self._taken: dict[str, int] = {}
        self._committing = 0  # handed over, their enqueue's commit not yet over
        self._settled = asyncio.Event()
        self._settled.set()
        self._ready: list[Delivery] = []

    def open(self, max_count: int, room: Room, blocked: frozenset[str], until: float) -> None:
        """A lease waits (until ``until``, wall clock) with room for ``max_count`` events; functions
        in ``blocked`` have due events it could not take (no room): theirs come first."""
        self._room, self._left, self._blocked, self._until = room, max_count, blocked, until
        self._taken.clear()

    @property
    def waiting(self) -> bool:
        """Whether a lease waits and takes hand-offs now."""
        return self._room is not None

    def stop(self) -> None:
        """No more hand-offs to this wait (the lease looks at the queue again, or returns)."""
        self._room = None

    def reserve(self, function: str) -> bool:
        """Whether an event of ``function`` being enqueued now goes to the waiting lease; if so,
        :meth:`delivered` must follow once its commit is over."""
        room = self._room
        if room is None or self._left <= 0 or function in self._blocked or time.time() >= self._until:
            return False
        taken = self._taken.get(function, 0)
        if room(function) - taken <= 0:
            return False
        self._taken[function] = taken + 1
        self._left -= 1
        self._committing += 1
        self._settled.clear()
        return True

    def delivered(self, delivery: Delivery | None) -> None:
        """A reserved event's commit is over: its delivery, or None when it failed (not stored)."""
        self._committing -= 1
        if delivery is not None:
            self._ready.append(delivery)
        if self._committing == 0:
            self._settled.set()

    async def collect(self) -> list[Delivery]:
        """What this wait was handed, once the commits of those still being stored are over."""
        self.stop()
        await self._settled.wait()
        return self.take()

    def take(self) -> list[Delivery]:
        ready, self._ready = self._ready, []
        return ready
