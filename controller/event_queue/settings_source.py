"""A function's event invoke config, read through the registry client
(``GET /v1/functions/<brn>/event-invoke-config``) and cached briefly: a retry or an expiry follows a
change within ``ttl`` seconds."""

from __future__ import annotations

import time

import structlog

from controller.registry import Registry
from easyfaas.errors import FaasError, ResourceNotFound
from easyfaas.event_invoke import DEFAULT_EVENT_INVOKE_CONFIG, EventInvokeConfig

log = structlog.get_logger(__name__)


class EventInvokeConfigSource:
    def __init__(self, registry: Registry, *, ttl: float = 5.0, timeout: float = 10.0) -> None:
        self.registry = registry  # started and closed by its owner (the controller's client context)
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, EventInvokeConfig]] = {}

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
        try:
            config = await self.registry.get_event_invoke_config(function, account_id=account, request_id=request_id,
                                                                 timeout=self.timeout)
        except ResourceNotFound:
            config = DEFAULT_EVENT_INVOKE_CONFIG
        except FaasError as exc:
            log.warning("event_invoke_config_unavailable", function=function, error=exc.cause or exc.message)
        self._cache[function] = (now + self.ttl, config)
        return config
