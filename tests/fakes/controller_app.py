"""The controller's aiohttp application in one process (:func:`make_env`): a registry served by
:class:`~tests.fakes.stubs_registry.FakeStubs`, one :class:`~tests.fakes.frame_runtime.FrameRuntime`
per sandbox on real unix sockets, and the funclet in memory
(:class:`~tests.fakes.funclet_api.FakeFunclet`); :func:`make_async_env` is the same with a registry
that also serves per-function event-invoke configs, for asynchronous invocations."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller.app import POOL, create_app
from controller.options import parse_controller_options
from controller.registry import Registry
from easyfaas.brn import Brn
from tests.fakes.frame_runtime import FrameRuntime
from tests.fakes.funclet_api import FakeFunclet
from tests.fakes.stubs_registry import OWNER, FakeStubs, function_record

OTHER = "0123456789abcdef0123456789abcdef"
H = {"X-easyfaas-Account-Id": OWNER}


class Env:
    def __init__(self, client: TestClient, funclet: FakeFunclet, stubs: FakeStubs,
                 runtimes: dict[str, FrameRuntime]) -> None:
        self.client = client
        self.funclet = funclet
        self.stubs = stubs
        self.runtimes = runtimes

    @property
    def pool(self) -> Any:
        return self.client.server.app[POOL]

    def requests_seen(self) -> list[dict[str, Any]]:
        return [r for rt in self.runtimes.values() for r in rt.requests]

    async def invoke(self, name: str, event: Any = None, *, headers: dict[str, str] | None = None,
                     data: bytes | str | None = None, params: dict[str, str] | None = None) -> Any:
        body = data if data is not None else json.dumps(event if event is not None else {})
        return await self.client.post(f"/v1/functions/{name}/invocations", data=body,
                                      headers=H if headers is None else headers, params=params)


async def make_env(containers: int = 3, extra_args: tuple[str, ...] = (),
                   server_kwargs: dict[str, Any] | None = None) -> tuple[Env, Any]:
    sock_dir = tempfile.mkdtemp(prefix="ef-api-")
    runtimes = {f"c{i}": await FrameRuntime(os.path.join(sock_dir, f"c{i}.sock")).start() for i in range(containers)}
    funclet = FakeFunclet(containers, socket_for=lambda cid: os.path.join(sock_dir, f"{cid}.sock"))
    stubs = FakeStubs()
    endpoint = await stubs.start()
    stubs.add(function_record("hello"))
    stubs.add(function_record("hello", "1"))
    stubs.add(function_record("slow", timeout=1))
    stubs.add(function_record("wide", quota=4))
    stubs.add(function_record("foreign", uid=OTHER))
    opts = parse_controller_options(["--task-interval", "3600", "--runtime-alive-timeout", "5",
                                     "--runtime-failure-wait", "1",
                                     "--state-dir", os.path.join(sock_dir, "state"), *extra_args])
    app = create_app(opts, funclet=funclet, registry=Registry(endpoint))  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1", **(server_kwargs or {})))
    await client.start_server()
    await app[POOL].wait_ready(2)

    async def cleanup() -> None:
        await client.close()
        await stubs.stop()
        for rt in runtimes.values():
            await rt.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        assert funclet.closed, "the app must close its funclet client"

    return Env(client, funclet, stubs, runtimes), cleanup


# ---- asynchronous invocations ------------------------------------------------------------------

EVENT = {**H, "X-easyfaas-Invoke-Type": "event"}


class StubsWithEventConfig(FakeStubs):
    def __init__(self) -> None:
        super().__init__()
        self.event_configs: dict[str, dict[str, Any]] = {}

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/v1/functions/{brn}/event-invoke-config", self._event_config)
        return app

    async def _event_config(self, request: web.Request) -> web.Response:
        config = self.event_configs.get(request.match_info["brn"])
        if config is None:
            return web.json_response({"Code": "ResourceNotFoundException", "Message": "x", "Status": 404,
                                      "Type": "User"}, status=404)
        return web.json_response(config)


class AsyncEnv:
    def __init__(self, client: TestClient, stubs: StubsWithEventConfig, runtimes: dict[str, FrameRuntime]) -> None:
        self.client = client
        self.stubs = stubs
        self.runtimes = runtimes

    def requests_seen(self) -> list[dict[str, Any]]:
        return [r for rt in self.runtimes.values() for r in rt.requests]

    def brn(self, name: str) -> str:
        return str(Brn.for_account(OWNER, name))

    async def enqueue(self, name: str, event: Any, headers: dict[str, str] | None = None) -> str:
        resp = await self.client.post(f"/v1/functions/{name}/invocations", data=json.dumps(event),
                                      headers={**EVENT, **(headers or {})})
        assert resp.status == 202, await resp.text()
        rid = resp.headers["X-easyfaas-Request-Id"]
        assert resp.headers["Location"] == f"/v1/invocations/{rid}"
        return rid

    async def record(self, rid: str, account: str = OWNER) -> tuple[int, Any]:
        resp = await self.client.get(f"/v1/invocations/{rid}", headers={"X-easyfaas-Account-Id": account})
        return resp.status, await resp.json()

    async def finished(self, rid: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, body = await self.record(rid)
            assert status == 200, body
            if body["Status"] in ("succeeded", "failed", "expired"):
                return body
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.05)


async def make_async_env(*args: str, containers: int = 2) -> tuple[AsyncEnv, Any]:
    tmp = tempfile.mkdtemp(prefix="ef-async-")
    runtimes = {f"c{i}": await FrameRuntime(os.path.join(tmp, f"c{i}.sock")).start() for i in range(containers)}
    funclet = FakeFunclet(containers, socket_for=lambda cid: os.path.join(tmp, f"{cid}.sock"))
    stubs = StubsWithEventConfig()
    endpoint = await stubs.start()
    stubs.add(function_record("hello"))
    stubs.add(function_record("dest"))
    stubs.add(function_record("foreign", uid=OTHER))
    opts = parse_controller_options(["--task-interval", "3600", "--runtime-alive-timeout", "5",
                                     "--runtime-failure-wait", "1", "--state-dir",
                                     os.path.join(tmp, "state"), "--event-retry-base", "0.05", *args])
    app = create_app(opts, funclet=funclet, registry=Registry(endpoint))  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()

    async def cleanup() -> None:
        await client.close()
        await stubs.stop()
        for rt in runtimes.values():
            await rt.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    return AsyncEnv(client, stubs, runtimes), cleanup
