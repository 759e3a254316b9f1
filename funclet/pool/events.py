"""The funclet's event log: the last sandbox changes, numbered, for ``GET /v1/funclet/events``.

The controller follows it, so it learns about dead runtimes within milliseconds instead of at its
next poll.
"""

from __future__ import annotations

import time

from easyfaas.feed import FeedBatch, NumberedFeed
from easyfaas.models import ContainerInfo, FuncletEvent, FuncletEvents, FuncletEventType, RuntimeExit


class EventLog:
    """The last ``size`` sandbox events, numbered; readers wait for the ones after a number."""

    def __init__(self, size: int = 1024) -> None:
        self._feed: NumberedFeed[FuncletEvent] = NumberedFeed(size)
        self.boot_id = self._feed.boot_id

    @property
    def seq(self) -> int:
        return self._feed.seq

    def emit(self, kind: FuncletEventType, container: ContainerInfo, *, exit: RuntimeExit | None = None,
             reason: str = "") -> FuncletEvent:
        return self._feed.append(lambda seq: FuncletEvent(
            Seq=seq, Time=time.time(), Type=kind.value, ContainerID=container.ContainerID, Container=container,
            Exit=exit, Reason=reason))

    def since(self, after: int) -> FuncletEvents:
        return self._batch(self._feed.since(after))

    async def wait(self, after: int, timeout: float) -> FuncletEvents:
        return self._batch(await self._feed.wait(after, timeout))

    @staticmethod
    def _batch(batch: FeedBatch[FuncletEvent]) -> FuncletEvents:
        return FuncletEvents(BootID=batch.boot_id, Seq=batch.seq, Lost=batch.lost, Events=batch.items)

    def close(self) -> None:
        self._feed.close()
