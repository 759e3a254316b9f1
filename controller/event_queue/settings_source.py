"""A function's event invoke config, read from stubs (``GET /v1/functions/<brn>/event-invoke-config``)
and cached briefly: a retry or an expiry follows a change within ``ttl`` seconds."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable
from urllib.parse import quote

import aiohttp
import structlog

from easyfaas.event_invoke import DEFAULT_EVENT_INVOKE_CONFIG, EventInvokeConfig
from easyfaas.http import ACCOUNT_ID, REQUEST_ID

log = structlog.get_logger(__name__)


class EventInvokeConfigSource:
    def __init__(self, base: str, *, ttl: float = 5.0, timeout: float = 10.0,
                 credentials: Callable[[], dict[str, str]] | None = None, ssl: Any = None) -> None:
        self._credentials = credentials  # the pod's key, when stubs requires keys
        self._ssl = ssl
        self.base = base.rstrip("/")  # the registry's API root, e.g. http://127.0.0.1:8002/v1
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, EventInvokeConfig]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get(self, function: str, account: str, request_id: str) -> EventInvokeConfig:
        """The config of ``function`` (an unqualified BRN); Lambda's defaults when it has none.

        When stubs cannot be asked, the last known config (or the defaults) stands in: a settings
        lookup must not hold an event back.
        """
        now = time.monotonic()
        hit = self._cache.get(function)
        if hit is not None and hit[0] > now:
            return hit[1]
        config = hit[1] if hit is not None else DEFAULT_EVENT_INVOKE_CONFIG
        if self._session is None:
            return config
        url = f"{self.base}/functions/{quote(function, safe=':$')}/event-invoke-config"
        try:
            headers = {ACCOUNT_ID: account, REQUEST_ID: request_id,
                       **(self._credentials() if self._credentials is not None else {})}
            async with self._session.get(url, headers=headers) as resp:
                body = await resp.read()
                if resp.status == 404:
                    config = DEFAULT_EVENT_INVOKE_CONFIG
                elif resp.status == 200:
                    config = EventInvokeConfig.from_dict(json.loads(body))
                else:
                    log.warning("event_invoke_config_unavailable", function=function, status=resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.warning("event_invoke_config_unavailable", function=function, error=str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a malformed stored config is not the event's fault
            log.warning("event_invoke_config_malformed", function=function, error=str(exc))
        self._cache[function] = (now + self.ttl, config)
        return config
