"""Follows stubs' trigger feed (``GET /v1/trigger-changes``) and gives the gateway a new route table
whenever the ``http`` triggers change: routes change within a long poll's round trip, no restart.

The first read (and any read after stubs restarted or the reader fell behind) carries every
trigger; later reads carry the changes. A trigger whose route is invalid or collides with one
already in the table (stubs refuses both, so only stale records can) is left out and logged.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog

from easyfaas.trigger_feed import POLL_WAIT, RETRY_DELAY, follow_trigger_changes
from easyfaas.triggers import Trigger, TriggerChangeAction, TriggerChanges
from httptrigger.config import HTTP_TRIGGER_TYPE, RouteTarget, routes_of
from httptrigger.gateway import Gateway
from httptrigger.routes import RouteConflict, RouteError, RouteTable

log = structlog.get_logger(__name__)


def tolerant_table(triggers: list[Trigger]) -> RouteTable[RouteTarget]:
    table: RouteTable[RouteTarget] = RouteTable()
    for trigger in sorted(triggers, key=lambda t: (t.CreatedAt, t.TriggerId)):
        if trigger.Type != HTTP_TRIGGER_TYPE:
            continue
        try:
            for route in routes_of(trigger):
                table.add(route)
        except (RouteError, RouteConflict) as exc:
            log.warning("trigger_route_skipped", trigger=trigger.TriggerId, error=str(exc))
    return table


class TriggerFollower:
    def __init__(self, stubs_url: str, gateway: Gateway, session: aiohttp.ClientSession, *,
                 poll_wait: float = POLL_WAIT, retry_delay: float = RETRY_DELAY) -> None:
        self.stubs_url = stubs_url.rstrip("/")
        self.gateway = gateway
        self.session = session
        self.poll_wait = poll_wait
        self.retry_delay = retry_delay
        self.triggers: dict[str, Trigger] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, first_sync_timeout: float = 5.0) -> None:
        """Follow in the background; wait a moment for the first table (stubs may not be up yet)."""
        self._task = asyncio.get_running_loop().create_task(self._follow())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.synced.wait(), first_sync_timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        await follow_trigger_changes(self.session, f"{self.stubs_url}/v1/trigger-changes", self._apply,
                                     poll_wait=self.poll_wait, retry_delay=self.retry_delay)

    async def _apply(self, batch: TriggerChanges) -> None:
        changed = False
        if batch.Triggers is not None:
            self.triggers = {t.TriggerId: t for t in batch.Triggers}
            changed = True
        for change in batch.Changes:
            if change.Action == TriggerChangeAction.PUT.value and change.Trigger is not None:
                self.triggers[change.TriggerId] = change.Trigger
                changed = True
            elif change.Action == TriggerChangeAction.DELETE.value:
                changed = self.triggers.pop(change.TriggerId, None) is not None or changed
        if changed or not self.synced.is_set():
            table = tolerant_table(list(self.triggers.values()))
            self.gateway.set_routes(table)
            log.info("gateway_routes", routes=len(table), seq=batch.Seq)
        self.synced.set()
