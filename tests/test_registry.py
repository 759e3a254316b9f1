"""controller.registry against a real aiohttp server on 127.0.0.1 standing in for stubs
(:class:`tests.fakes.stubs_registry.FakeStubs`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import AsyncIterator

import pytest

from controller.registry import Registry, TTLCache
from easyfaas.brn import Brn, account_hash
from easyfaas.errors import InvalidInvokeCaller, ResourceNotFound, ServiceError
from easyfaas.models import function_identity
from tests.fakes.stubs_registry import OWNER, FakeStubs, function_record


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
