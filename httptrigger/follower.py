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

from easyfaas.models import ModelError
from easyfaas.triggers import Trigger, TriggerChangeAction, TriggerChanges
from httptrigger.config import HTTP_TRIGGER_TYPE, RouteTarget, routes_of
from httptrigger.gateway import Gateway
from httptrigger.routes import RouteConflict, RouteError, RouteTable

log = structlog.get_logger(__name__)

POLL_WAIT = 30.0
RETRY_DELAY = 1.0


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
        after, boot = -1, ""
        url = f"{self.stubs_url}/v1/trigger-changes"
        timeout = aiohttp.ClientTimeout(total=self.poll_wait + 10)
        while True:
            try:
                params = {"after": str(after), "wait": str(self.poll_wait if after >= 0 else 0)}
                async with self.session.get(url, params=params, timeout=timeout) as resp:
                    if resp.status == 404:
                        log.warning("trigger_feed_missing", stubs=self.stubs_url)
                        await asyncio.sleep(self.retry_delay * 5)
                        continue
                    resp.raise_for_status()
                    batch = TriggerChanges.from_dict(await resp.json())
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, ModelError) as exc:
                log.info("trigger_feed_unavailable", stubs=self.stubs_url, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(self.retry_delay)
                continue
            if boot and batch.BootID != boot and batch.Triggers is None:
                after, boot = -1, ""  # stubs restarted: read everything again
                continue
            self._apply(batch)
            after, boot = batch.Seq, batch.BootID

    def _apply(self, batch: TriggerChanges) -> None:
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
