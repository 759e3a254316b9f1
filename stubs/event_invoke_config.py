"""``PUT|GET|DELETE /v1/functions/<ref>/event-invoke-config``: a function's asynchronous-invocation
settings (Lambda's ``FunctionEventInvokeConfig``), validated by ``easyfaas/event_invoke.py``,
stored atomically beside the function and removed with it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from easyfaas.brn import LATEST
from easyfaas.errors import ResourceNotFound
from easyfaas.event_invoke import EventInvokeConfig
from easyfaas.http import read_json

if TYPE_CHECKING:
    from stubs.app import StubsHandlers

log = structlog.get_logger(__name__)

MAX_CONFIG_BODY = 64 * 1024


class EventInvokeConfigHandlers:
    """The three routes, on top of the function handlers' reference resolution and store."""

    def __init__(self, functions: StubsHandlers) -> None:
        self.functions = functions
        self.store = functions.store

    async def _function(self, request: web.Request) -> tuple[str, str, str]:
        _, brn = self.functions.resolve(request, None)
        if await self.store.read(brn.account, brn.name, LATEST) is None:
            raise ResourceNotFound(f"function not found: {brn.unqualified()}")
        return brn.account, brn.name, str(brn.unqualified())

    async def put(self, request: web.Request) -> web.Response:
        account, name, arn = await self._function(request)
        config = EventInvokeConfig.parse(await read_json(request, max_size=MAX_CONFIG_BODY), function_arn=arn)
        data = json.dumps(config.to_dict(), ensure_ascii=False).encode()
        async with self.store.lock(account, name):
            if await self.store.read(account, name, LATEST) is None:  # deleted while we parsed
                raise ResourceNotFound(f"function not found: {arn}")
            await self.store.write_event_invoke_config(account, name, data)
        log.info("event_invoke_config_put", function=arn, retries=config.MaximumRetryAttempts,
                 max_age=config.MaximumEventAgeInSeconds)
        return web.json_response(config.to_dict())

    async def get(self, request: web.Request) -> web.Response:
        account, name, arn = await self._function(request)
        data = await self.store.read_event_invoke_config(account, name)
        if data is None:
            raise ResourceNotFound(f"the function {arn} has no event invoke config")
        return web.json_response(EventInvokeConfig.from_dict(json.loads(data)).to_dict())

    async def delete(self, request: web.Request) -> web.Response:
        account, name, arn = await self._function(request)
        async with self.store.lock(account, name):
            deleted = await self.store.delete_event_invoke_config(account, name)
        if not deleted:
            raise ResourceNotFound(f"the function {arn} has no event invoke config")
        return web.Response(status=204)


def add_routes(app: web.Application, functions: StubsHandlers) -> None:
    h = EventInvokeConfigHandlers(functions)
    path = "/v1/functions/{ref}/event-invoke-config"
    app.router.add_put(path, h.put)
    app.router.add_get(path, h.get)
    app.router.add_delete(path, h.delete)
