"""The secrets API of stubs; values go in, only names come out:

* ``PUT /v1/functions/<ref>/secrets`` ``{"NAME": "value", ...}`` → ``{"Names": [...]}`` (adds or replaces);
* ``GET /v1/functions/<ref>/secrets`` → ``{"Names": [...]}``;
* ``DELETE /v1/functions/<ref>/secrets/<NAME>`` → 204.

The function must exist and belong to the caller's account. Values are stored by
:class:`easyfaas.secret_store.SecretStore`, never logged, and never returned.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from easyfaas.errors import ResourceNotFound
from easyfaas.http import read_json
from easyfaas.secret_store import MAX_SECRET_BYTES, MAX_SECRETS, SecretStore

if TYPE_CHECKING:
    from stubs.app import StubsHandlers

__all__ = ["SECRETS", "add_secret_routes"]

SECRETS = web.AppKey("secrets", SecretStore)


def add_secret_routes(app: web.Application, handlers: StubsHandlers, store: SecretStore) -> None:
    app[SECRETS] = store
    lock = asyncio.Lock()  # read-modify-write of one file per function: one writer at a time

    async def function_of(request: web.Request) -> tuple[str, str]:
        _, brn = handlers.resolve(request, None)
        await handlers.load(brn)
        return brn.account, brn.name

    async def put_secrets(request: web.Request) -> web.Response:
        account, name = await function_of(request)
        body = await read_json(request, max_size=MAX_SECRETS * (MAX_SECRET_BYTES + 256))
        async with lock:
            names = await asyncio.to_thread(store.put, account, name, body)
        return web.json_response({"Names": names})

    async def list_secrets(request: web.Request) -> web.Response:
        account, name = await function_of(request)
        return web.json_response({"Names": await asyncio.to_thread(store.names, account, name)})

    async def delete_secret(request: web.Request) -> web.Response:
        account, name = await function_of(request)
        secret = request.match_info["secret"]
        async with lock:
            deleted = await asyncio.to_thread(store.delete, account, name, secret)
        if not deleted:
            raise ResourceNotFound(f"function {name} has no secret {secret[:130]}")
        return web.Response(status=204)

    app.router.add_put("/v1/functions/{ref}/secrets", put_secrets)
    app.router.add_get("/v1/functions/{ref}/secrets", list_secrets)
    app.router.add_delete("/v1/functions/{ref}/secrets/{secret}", delete_secret)
