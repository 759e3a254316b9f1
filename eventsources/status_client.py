"""Live status of event-source triggers as stubs merges it into ``GET /v1/functions/<name>/triggers/<id>``:
asked of the controller that runs the sources (``GET /v1/event-sources/<id>``), briefly, so a
controller that is down or slow only leaves the status out (``State: "unknown"``)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import aiohttp
import structlog

from easyfaas.http import ACCOUNT_ID
from easyfaas.triggers import Trigger
from eventsources.mqtt_config import MQTT_TRIGGER_TYPE
from eventsources.schedule import CRON_TRIGGER_TYPE

log = structlog.get_logger(__name__)

EVENT_SOURCE_TYPES = frozenset({CRON_TRIGGER_TYPE, MQTT_TRIGGER_TYPE})
TIMEOUT = 1.0


class EventSourceStatus:
    def __init__(self, controller_url: str, *, timeout: float = TIMEOUT,
                 credentials: Callable[[], dict[str, str]] | None = None, ssl: Any = None) -> None:
        self._ssl = ssl  # the CA of a controller on TLS (--tls-ca)
        self.controller_url = controller_url.rstrip("/")
        self.credentials = credentials  # the pod's key, when the controller requires keys
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def status(self, trigger: Trigger) -> dict[str, Any] | None:
        """The fields to merge into the trigger's GET; None for types no event source runs."""
        if trigger.Type not in EVENT_SOURCE_TYPES:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None)
        url = f"{self.controller_url}/v1/event-sources/{trigger.TriggerId}"
        try:
            headers = {ACCOUNT_ID: trigger.Uid, **(self.credentials() if self.credentials is not None else {})}
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 404:
                    return {"State": "pending"}  # the controller has not taken it up (yet)
                if resp.status != 200:
                    return {"State": "unknown"}
                body = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.info("trigger_status_unavailable", trigger=trigger.TriggerId, error=str(exc) or type(exc).__name__)
            return {"State": "unknown"}
        return {k: v for k, v in body.items() if k not in ("TriggerId", "Type")}
