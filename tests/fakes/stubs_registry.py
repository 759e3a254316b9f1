"""Stubs' registry routes served from dicts by a real aiohttp server on 127.0.0.1 (:class:`FakeStubs`),
and the function records it serves (:func:`function_record`), for the controller's registry client."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from easyfaas.brn import Brn, account_hash

OWNER = "df391b08c64c426a81645468c75163a5"


def function_record(name: str, version: str = "$LATEST", *, uid: str = OWNER, timeout: int = 3, quota: int = 0,
                    runtime: str = "python3", memory: int = 128) -> dict[str, Any]:
    brn = str(Brn(account_hash(uid), name, version))
    return {
        "Code": {"Location": f"/var/faas/funcData/{name}.zip", "RepositoryType": "filesystem"},
        "Configuration": {
            "FunctionArn": brn, "FunctionName": name, "Version": version, "Runtime": runtime,
            "Handler": "index.handler", "MemorySize": memory, "Timeout": timeout, "CodeSha256": f"sha-{name}",
            "CommitId": "c1", "Uid": uid, "PodConcurrentQuota": quota,
        },
        "Tags": {},
    }


class FakeStubs:
    """Serves /v1/functions/{brn} and /v1/runtimes/{name}/configuration from dicts; counts hits."""

    def __init__(self) -> None:
        self.functions: dict[str, dict[str, Any]] = {}
        self.runtimes: dict[str, dict[str, Any]] = {
            "python3": {"Name": "python3", "Bin": "/usr/bin/python3", "Path": "/var/faas/runtime/python3",
                        "Args": [], "Launch": "fork-python"},
        }
        self.hits: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.delay = 0.0
        self.broken: set[str] = set()
        self.forbidden: set[str] = set()
        self.server: TestServer | None = None

    def add(self, record: dict[str, Any]) -> str:
        brn = record["Configuration"]["FunctionArn"]
        self.functions[brn] = record
        return brn

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/functions/{brn}", self._function)
        app.router.add_get("/v1/runtimes/{name}/configuration", self._runtime)
        return app

    async def _function(self, request: web.Request) -> web.Response:
        brn = request.match_info["brn"]
        self.hits.append(brn)
        self.headers.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        if brn in self.broken:
            return web.json_response({"Code": "ServiceException", "Cause": "disk on fire", "Message": "x",
                                      "Status": 500, "Type": "Server"}, status=500)
        if brn in self.forbidden:
            return web.json_response({"Code": "UnrecognizedClientException", "Cause": "not your function",
                                      "Message": "Access Denied", "Status": 403, "Type": "User"}, status=403)
        if brn.endswith(":7"):
            return web.Response(text="{not json", content_type="application/json")
        record = self.functions.get(brn)
        if record is None:
            return web.json_response({"Code": "ResourceNotFoundException", "Cause": f"function {brn} not found",
                                      "Message": "The resource specified in the request does not exist",
                                      "Status": 404, "Type": "User"}, status=404)
        return web.json_response(record)

    async def _runtime(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits.append(f"runtime:{name}")
        config = self.runtimes.get(name)
        if config is None:
            return web.Response(status=404, text="no such runtime")
        return web.json_response(config)

    async def start(self) -> str:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
