"""The supervisor of the event sources: follows stubs' trigger change feed
(``GET /v1/trigger-changes?after=&wait=``, a long poll) and tells each source which of its
triggers were added, changed or removed, so a change takes effect within a poll's round trip.

The first read (and any after stubs restarted or the reader fell behind) carries every trigger;
it replaces what the supervisor knew: triggers no longer there are removed from their source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog

from easyfaas.trigger_feed import POLL_WAIT, RETRY_DELAY, follow_trigger_changes
from easyfaas.triggers import TriggerChangeAction, TriggerChanges
from eventsources.source import EventSource, SourceTrigger, TriggerChange

log = structlog.get_logger(__name__)


class EventSourceSupervisor:
    def __init__(self, feed_url: str, sources: Mapping[str, EventSource], *, poll_wait: float = POLL_WAIT,
                 retry_delay: float = RETRY_DELAY, credentials: Callable[[], dict[str, str]] | None = None,
                 ssl: Any = None) -> None:
        self._ssl = ssl  # the CA of a stubs on TLS (--tls-ca)
        self.feed_url = feed_url
        self.credentials = credentials  # the pod's key, for stubs' trigger feed when keys are required
        self.sources = dict(sources)
        self.poll_wait = poll_wait
        self.retry_delay = retry_delay
        self.triggers: dict[str, SourceTrigger] = {}
        self.synced = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for source in self.sources.values():
            await source.start()
        self._session = aiohttp.ClientSession(
            headers=self.credentials() if self.credentials is not None else None,
            connector=aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for source in self.sources.values():
            try:
                await source.stop()
            except Exception as exc:  # noqa: BLE001 - the other sources still stop
                log.error("event_source_stop_failed", type=source.type, error=repr(exc))
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def status(self, trigger_id: str) -> dict[str, Any] | None:
        """The trigger's live status from its source; None when no source runs it."""
        trigger = self.triggers.get(trigger_id)
        if trigger is None or trigger.type not in self.sources:
            return None
        return self.sources[trigger.type].status(trigger_id)

    async def _follow(self) -> None:
        assert self._session is not None
        await follow_trigger_changes(self._session, self.feed_url, self._apply,
                                     poll_wait=self.poll_wait, retry_delay=self.retry_delay)

    async def _apply(self, batch: TriggerChanges) -> None:
        if batch.Triggers is not None:
            fresh = {t.trigger_id: t for t in map(SourceTrigger.of, batch.Triggers)}
            for trigger_id in set(self.triggers) - set(fresh):
                await self._tell(TriggerChange.REMOVED, self.triggers.pop(trigger_id))
            for trigger in fresh.values():
                await self._put(trigger)
        for change in batch.Changes:
            if change.Action == TriggerChangeAction.PUT.value and change.Trigger is not None:
                await self._put(SourceTrigger.of(change.Trigger))
            elif change.Action == TriggerChangeAction.DELETE.value:
                gone = self.triggers.pop(change.TriggerId, None)
                if gone is not None:
                    await self._tell(TriggerChange.REMOVED, gone)
        self.synced.set()

    async def _put(self, trigger: SourceTrigger) -> None:
        old = self.triggers.get(trigger.trigger_id)
        self.triggers[trigger.trigger_id] = trigger
        if old is not None and old == trigger:
            return
        await self._tell(TriggerChange.ADDED if old is None else TriggerChange.CHANGED, trigger)

    async def _tell(self, change: TriggerChange, trigger: SourceTrigger) -> None:
        source = self.sources.get(trigger.type)
        if source is None:
            return  # another daemon's type (http)
        try:
            await source.apply(change, trigger)
        except Exception as exc:  # noqa: BLE001 - one trigger's fault must not stop the others
            log.error("event_source_apply_failed", trigger=trigger.trigger_id, type=trigger.type, error=repr(exc))
