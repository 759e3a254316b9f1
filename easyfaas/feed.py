"""A numbered change feed that readers follow by long poll (funclet sandbox events, stubs code changes).

The writer appends items; each gets the next number. A reader asks for the items after the last
number it saw and waits up to a timeout for the first one. The feed keeps only its last ``size``
items, and it has a boot id: a reader whose number is older than the oldest kept, or that counts
items of another run of the writer (a different boot id, or a number above the current one), is
told it ``lost`` items and must resynchronise some other way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass
class FeedBatch(Generic[T]):
    boot_id: str
    seq: int
    lost: bool = False
    items: list[T] = field(default_factory=list)


class NumberedFeed(Generic[T]):
    def __init__(self, size: int = 1024, *, min_size: int = 16) -> None:
        self.boot_id = uuid.uuid4().hex
        self._items: deque[tuple[int, T]] = deque(maxlen=max(min_size, size))
        self._seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._closed = False

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, make: Callable[[int], T]) -> T:
        """Number the next item and build it with that number (items usually carry their own)."""
        self._seq += 1
        item = make(self._seq)
        self._items.append((self._seq, item))
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return item

    def since(self, after: int) -> FeedBatch[T]:
        """Items numbered above ``after``; ``after`` < 0 asks only for the current number."""
        if after < 0:
            return FeedBatch(self.boot_id, self._seq)
        if after > self._seq:
            return FeedBatch(self.boot_id, self._seq, lost=True)
        oldest = self._items[0][0] if self._items else self._seq + 1
        items = [item for seq, item in self._items if seq > after]
        return FeedBatch(self.boot_id, self._seq, lost=after < oldest - 1, items=items)

    async def wait(self, after: int, timeout: float) -> FeedBatch[T]:
        """Items after ``after``; waits up to ``timeout`` for the first one when there is none yet."""
        batch = self.since(after)
        if batch.items or batch.lost or timeout <= 0 or after < 0 or self._closed:
            return batch
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
        return self.since(after)

    def close(self) -> None:
        """Wake every reader; later reads do not wait (the writer is stopping)."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
