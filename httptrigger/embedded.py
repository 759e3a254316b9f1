"""The gateway inside the controller process (``--gateway-port``): invocations go straight into the
controller's invoke pipeline, with no second HTTP hop and no second JSON round trip.

:func:`embedded_gateway` is an aiohttp cleanup context for the controller's application: it starts
the gateway's listener and the trigger follower, and at shutdown stops accepting, lets requests
under way finish (up to the drain timeout) and closes them, before the pool goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from easyfaas.http import ACCOUNT_ID
from httptrigger.follower import TriggerFollower
from httptrigger.gateway import Gateway, InvokeCall
from httptrigger.server import HttpServer

log = structlog.get_logger(__name__)

_NO_QUERY: dict[str, str] = {}


class _Reply(Protocol):
    status: int
    headers: dict[str, str]
    body: bytes


class _Invoker(Protocol):
    async def invoke(self, ref: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes,
                     request_id: str, *, body_is_json: bool = False) -> Any: ...


def invoker_call(invoker: _Invoker) -> InvokeCall:
    """The controller's ``Invoker.invoke`` as the gateway's invoke callable."""

    async def call(brn: str, account_id: str, event: bytes, request_id: str) -> tuple[int, Mapping[str, str], bytes]:
        reply: _Reply = await invoker.invoke(brn, _NO_QUERY, {ACCOUNT_ID: account_id}, event, request_id,
                                             body_is_json=True)
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.body

    return call


def embedded_gateway(invoker: _Invoker, *, host: str, port: int, stubs_url: str, max_body_size: int,
                     drain_timeout: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        gateway = Gateway(invoker_call(invoker), max_body_size=max_body_size)
        server = HttpServer(gateway.handle, max_body_size=max_body_size)
        async with aiohttp.ClientSession() as session:
            follower = TriggerFollower(stubs_url, gateway, session)
            # A moment for the first route table; a stubs not up yet must not hold the controller back.
            await follower.start(first_sync_timeout=1.0)
            await server.start(host, port)
            log.info("gateway_listening", host=host, port=server.port, routes=len(gateway.routes))
            try:
                yield
            finally:
                await server.close(drain_timeout)
                await follower.close()

    return lifetime
