"""The gateway as an endpoint of a daemon's service (easyfaas/daemon.py): where it listens, and its
lifetime. Started with the service's sites: an HTTP session, the trigger follower (a moment is
given for the first route table; a stubs not up yet holds nothing back) and the server. Stopped
with them, before the service's ``on_shutdown`` and cleanup: it stops accepting, lets requests
under way finish (up to ``drain_timeout``), then closes its connections, follower and session.

The controller serves it in-process (``--gateway-port``: invocations go straight into its invoke
pipeline); ``python -m httptrigger`` serves it on its own, invoking over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from httptrigger.follower import TriggerFollower
from httptrigger.gateway import Gateway, InvokeCall
from httptrigger.server import HttpServer

log = structlog.get_logger(__name__)

FIRST_SYNC_TIMEOUT = 1.0


@dataclass(frozen=True)
class GatewayEndpoint:
    host: str
    port: int
    stubs_url: str
    invoke: Callable[[aiohttp.ClientSession], InvokeCall]  # given the endpoint's own HTTP session
    max_body_size: int = 6 << 20
    drain_timeout: float = 30.0

    def site(self, runner: web.AppRunner) -> web.BaseSite:
        return _GatewaySite(runner, self)

    def describe(self) -> dict[str, Any]:
        return {"gateway": f"{self.host}:{self.port}"}


class _GatewaySite(web.BaseSite):
    def __init__(self, runner: web.AppRunner, endpoint: GatewayEndpoint) -> None:
        super().__init__(runner)
        self._endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._follower: TriggerFollower | None = None
        self._server: HttpServer | None = None

    @property
    def name(self) -> str:
        return f"http://{self._endpoint.host}:{self._endpoint.port}"

    async def start(self) -> None:
        await super().start()
        e = self._endpoint
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=960))
        gateway = Gateway(e.invoke(self._session), max_body_size=e.max_body_size)
        self._follower = TriggerFollower(e.stubs_url, gateway, self._session)
        await self._follower.start(first_sync_timeout=FIRST_SYNC_TIMEOUT)
        self._server = HttpServer(gateway.handle, max_body_size=e.max_body_size)
        await self._server.start(e.host, e.port)
        log.info("gateway_listening", host=e.host, port=self._server.port, routes=len(gateway.routes))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close(self._endpoint.drain_timeout)
        if self._follower is not None:
            await self._follower.close()
        if self._session is not None:
            await self._session.close()
        await super().stop()
