"""controller.registry against a real aiohttp server on 127.0.0.1 standing in for stubs.

:class:`FakeStubs` is reused by the controller API tests.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.registry import Registry, TTLCache
from easyfaas.brn import Brn, account_hash
from easyfaas.errors import InvalidInvokeCaller, ResourceNotFound, ServiceError
from easyfaas.models import function_identity

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


@pytest.fixture
async def stubs() -> AsyncIterator[FakeStubs]:
    fake = FakeStubs()
    fake.endpoint = await fake.start()  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def registry(stubs: FakeStubs) -> AsyncIterator[Registry]:
    async with Registry(stubs.endpoint, "v1") as reg:  # type: ignore[attr-defined]
        yield reg


async def test_numeric_versions_are_cached(registry: Registry, stubs: FakeStubs) -> None:
    brn = Brn.parse(stubs.add(function_record("hello", "1")))
    first = await registry.get_function(brn, account_id=OWNER, request_id="req-1")
    second = await registry.get_function(brn, account_id=OWNER, request_id="req-2")
    assert first is second
    assert stubs.hits == [str(brn)]
    assert first.record.Configuration.FunctionName == "hello"
    assert first.identity == function_identity(first.record.Configuration)
    assert first.brn == str(brn)
    assert registry.cached_function(str(brn)) is first
    assert stubs.headers[0]["X-easyfaas-Account-Id"] == OWNER
    assert stubs.headers[0]["X-easyfaas-Request-Id"] == "req-1"


async def test_latest_is_not_cached_by_default(registry: Registry, stubs: FakeStubs) -> None:
    brn = Brn.parse(stubs.add(function_record("hello")))
    await registry.get_function(brn)
    await registry.get_function(brn)
    assert stubs.hits == [str(brn), str(brn)]
    assert registry.cached_function(str(brn)) is None


async def test_latest_cache_ttl_and_expiry(stubs: FakeStubs) -> None:
    latest = Brn.parse(stubs.add(function_record("hello")))
    v2 = Brn.parse(stubs.add(function_record("hello", "2")))
    async with Registry(stubs.endpoint, latest_ttl=5, function_ttl=0.05) as reg:  # type: ignore[attr-defined]
        await reg.get_function(latest)
        await reg.get_function(latest)
        assert stubs.hits == [str(latest)]
        await reg.get_function(v2)
        await asyncio.sleep(0.1)
        await reg.get_function(v2)
        assert stubs.hits == [str(latest), str(v2), str(v2)]


async def test_concurrent_misses_share_one_request(registry: Registry, stubs: FakeStubs) -> None:
    brn = Brn.parse(stubs.add(function_record("hello", "3")))
    stubs.delay = 0.1
    results = await asyncio.gather(*(registry.get_function(brn) for _ in range(5)))
    assert all(r is results[0] for r in results)
    assert stubs.hits == [str(brn)]


async def test_404_is_resource_not_found(registry: Registry, stubs: FakeStubs) -> None:
    brn = Brn(account_hash(OWNER), "missing", "1")
    with pytest.raises(ResourceNotFound, match="not found"):
        await registry.get_function(brn)
    # Errors are not cached.
    stubs.add(function_record("missing", "1"))
    assert (await registry.get_function(brn)).record.Configuration.FunctionName == "missing"


async def test_500_is_service_error(registry: Registry, stubs: FakeStubs) -> None:
    brn = stubs.add(function_record("hello", "4"))
    stubs.broken.add(brn)
    with pytest.raises(ServiceError, match="HTTP 500.*disk on fire"):
        await registry.get_function(Brn.parse(brn))


async def test_403_is_invalid_invoke_caller(registry: Registry, stubs: FakeStubs) -> None:
    brn = stubs.add(function_record("hello", "6"))
    stubs.forbidden.add(brn)
    with pytest.raises(InvalidInvokeCaller, match="not your function"):
        await registry.get_function(Brn.parse(brn))


async def test_malformed_answer_is_service_error(registry: Registry, stubs: FakeStubs) -> None:
    with pytest.raises(ServiceError, match="not JSON"):
        await registry.get_function(Brn(account_hash(OWNER), "hello", "7"))
    bad = function_record("typed", "5")
    bad["Configuration"]["MemorySize"] = "lots"
    stubs.add(bad)
    with pytest.raises(ServiceError, match="MemorySize"):
        await registry.get_function(Brn(account_hash(OWNER), "typed", "5"))


async def test_unreachable_registry_is_service_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Registry(f"http://127.0.0.1:{port}", timeout=2) as reg:
        with pytest.raises(ServiceError, match="unreachable"):
            await reg.get_function(Brn(account_hash(OWNER), "hello", "1"))


async def test_runtime_configuration_is_cached(registry: Registry, stubs: FakeStubs) -> None:
    first = await registry.get_runtime_configuration("python3")
    second = await registry.get_runtime_configuration("python3")
    assert first is second and first.Launch == "fork-python"
    assert stubs.hits == ["runtime:python3"]
    assert registry.cached_runtime("python3") is first
    with pytest.raises(ResourceNotFound):
        await registry.get_runtime_configuration("cobol")
    with pytest.raises(ServiceError, match="no runtime"):
        await registry.get_runtime_configuration("")


def test_ttl_cache() -> None:
    now = [100.0]
    cache: TTLCache[str] = TTLCache(clock=lambda: now[0])
    cache.put("a", "x", 10)
    cache.put("b", "y", 0)  # ttl 0: not cached at all
    assert cache.get("a") == "x" and cache.get("b") is None
    now[0] = 111
    assert cache.get("a") is None and len(cache) == 0
    cache.put("c", "z", 1)
    now[0] = 200
    assert cache.prune() == 1
