"""/metrics and /readyz of each daemon, in process: what the expositions say after real invocations,
and that ``promtool check metrics`` (the Prometheus project's own linter) accepts each of them.

Real parts: the controller application on a real HTTP server with a registry on 127.0.0.1 and
frame-speaking runtimes on unix sockets (tests/test_controller_api.py's environment); the stubs and
HTTP trigger applications on real servers; the funclet's application over its pool driven by the
in-process seam of tests/fakes (no root needed). The real pod, scraped by a real Prometheus, is
tests/test_metrics_prometheus.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import httptrigger.app
from easyfaas.metrics import (MAX_SERIES, OVERFLOW, Buckets, Tally, TriggerMetrics, add_observability_routes,
                              new_registry)
from easyfaas.runtimes import RuntimeCatalog
from easyfaas.metrics import METRICS_REGISTRY
from funclet.app import make_app as funclet_app
from funclet.metrics import FUNCLET_METRICS, metrics_app
from stubs.app import make_app as stubs_app
from stubs.metrics import add_stubs_observability
from stubs.store import FunctionStore
from easyfaas.pod_names import free_port
from tests.fakes.controller_app import H, Env, make_env
from tests.fakes.funclet_pool import make_pool, warmup_request  # noqa: F401 - make_pool is a fixture
from tests.metrics_harness import promtool_accepts, value


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, cleanup = await make_env()
    try:
        yield e
    finally:
        await cleanup()


# ---- the plain parts -------------------------------------------------------------------------------

def test_buckets_are_cumulative_with_inf() -> None:
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        b.observe(v)
    assert b.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert b.sum == pytest.approx(3.65)


def test_tally_bounds_its_label_sets() -> None:
    t = Tally()
    for i in range(MAX_SERIES + 10):
        t.add((f"f{i}",))
    assert len(t.counts) == MAX_SERIES + 1 and t.counts[(OVERFLOW,)] == 10


def test_registries_are_per_service() -> None:
    a, b = new_registry(), new_registry()
    assert isinstance(a, CollectorRegistry) and a is not b
    assert a.get_sample_value("process_cpu_seconds_total") is not None
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)  # noqa: SLF001 - the global default registry stays as it was
    new_registry()
    assert set(REGISTRY._names_to_collectors) == before  # noqa: SLF001


# ---- the controller ----------------------------------------------------------------------------------

async def test_controller_counts_invocations_cold_starts_errors_and_timeouts(env: Env) -> None:
    assert (await env.invoke("hello")).status == 200           # cold
    assert (await env.invoke("hello")).status == 200           # warm
    assert (await env.invoke("hello", {"fail": "no"})).status == 500
    assert (await env.invoke("slow", {"sleep": 3})).status == 500  # cut at its 1 s timeout
    assert (await env.invoke("nothere")).status == 404
    resp = await env.client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    hello = {"function": "hello", "version": "$LATEST", "trigger": "other"}
    assert value(text, "faas_invocations_total", result="success", **hello) == 2
    assert value(text, "faas_invocations_total", result="error", **hello) == 1
    assert value(text, "faas_errors_total", **hello) == 1
    assert value(text, "faas_coldstarts_total", **hello) == 1
    assert value(text, "faas_init_duration_seconds_count", **hello) == 1
    assert value(text, "faas_invoke_duration_seconds_count", **hello) == 3
    assert value(text, "faas_invoke_duration_seconds_bucket", le="10.0", **hello) == 3
    assert value(text, "faas_timeouts_total", function="slow") == 1
    assert value(text, "faas_invocations_total", function="slow", result="timeout") == 1
    assert value(text, "easyfaas_invoke_rejected_total", code="ResourceNotFoundException") == 1
    assert value(text, "easyfaas_pool_sandboxes") == 3
    assert value(text, "easyfaas_pool_sandboxes", phase="warm") >= 1
    assert value(text, "easyfaas_pool_events_total", event="cold_start") == 2
    assert value(text, "easyfaas_pool_ready") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    assert "request_id" not in text and "my-req" not in text
    promtool_accepts(text)


async def test_trigger_label_comes_from_the_trigger_header(env: Env) -> None:
    await env.invoke("hello", headers={**H, "X-easyfaas-Trigger": "http"})
    await env.invoke("hello", headers={**H, "X-easyfaas-Trigger": "made-up"})
    text = await (await env.client.get("/metrics")).text()
    assert value(text, "faas_invocations_total", function="hello", trigger="http") == 1
    assert value(text, "faas_invocations_total", function="hello", trigger="other") == 1


async def test_throttles_are_counted_per_function() -> None:
    e, cleanup = await make_env(containers=1, extra_args=("--queue-timeout", "0", "--min-free-sandboxes", "0"))
    try:
        import asyncio

        # One sandbox: a second function's request finds none free and no queue.
        first = asyncio.ensure_future(e.invoke("hello", {"sleep": 0.5}))
        await asyncio.sleep(0.2)
        assert (await e.invoke("wide")).status == 429
        assert (await first).status == 200
        text = await (await e.client.get("/metrics")).text()
        assert value(text, "easyfaas_throttles_total", function="wide", version="$LATEST") == 1
    finally:
        await cleanup()


async def test_readyz_says_the_registry_is_unreachable(env: Env) -> None:
    # The fake registry serves no /healthz: the pool is ready, the registry check fails.
    resp = await env.client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "pool": True, "registry": False}
    assert (await env.client.get("/healthz")).status == 200


async def test_metrics_and_function_logs_off() -> None:
    e, cleanup = await make_env(extra_args=("--metrics", "off", "--function-logs", "off"))
    try:
        assert (await e.invoke("hello")).status == 200
        text = await (await e.client.get("/metrics")).text()
        assert "faas_invocations_total" not in text and "process_cpu_seconds_total" in text
        assert e.requests_seen()[0]["log"] is False, "no output is asked for when nothing keeps it"
    finally:
        await cleanup()


# ---- the registry and the HTTP trigger ------------------------------------------------------------

async def test_stubs_metrics_and_readiness() -> None:
    root = Path(tempfile.mkdtemp(prefix="ef-stubs-metrics-"))
    try:
        store = FunctionStore(root / "funcs")
        (root / "runtimes").mkdir()
        app = stubs_app(store, RuntimeCatalog.load(str(root / "runtimes")))
        add_stubs_observability(app, store)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assert (await client.get("/v1/functions/nothere", headers=H)).status == 404
            resp = await client.get("/readyz")
            assert resp.status == 200 and (await resp.json())["readable"] is True
            text = await (await client.get("/metrics")).text()
            assert value(text, "easyfaas_registry_requests_total", route="/v1/functions/{ref}", status="4xx") == 1
            promtool_accepts(text)
            shutil.rmtree(root / "funcs")
            assert (await client.get("/readyz")).status == 503
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_httptrigger_counts_firings_and_errors() -> None:
    # The controller it names is not listening: the firing is counted, and its failure.
    registry = new_registry()
    metrics = TriggerMetrics(registry)
    app = web.Application()
    add_observability_routes(app, registry, healthz_route=True)
    async with aiohttp.ClientSession() as session, TestClient(TestServer(app, host="127.0.0.1")) as client:
        call = httptrigger.app.controller_call(f"127.0.0.1:{free_port()}", session, metrics)
        status, _, _ = await call("brn:cloud:faas:bj:" + "a" * 32 + ":function:fn:$LATEST", "someone", b"{}", "r-1", "")
        assert status == 503
        text = await (await client.get("/metrics")).text()
        assert value(text, "easyfaas_trigger_firings_total", trigger="http", function="fn") == 1
        assert value(text, "easyfaas_trigger_errors_total", trigger="http", function="fn") == 1
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/healthz")).status == 200
        promtool_accepts(text)


# ---- the funclet -------------------------------------------------------------------------------------

async def test_funclet_metrics_sample_peak_memory_at_release(make_pool: Any) -> None:  # noqa: F811
    h = await make_pool(2)
    app = funclet_app(h.pool)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/readyz")
        assert resp.status == 200 and (await resp.json())["built"] == 2
        await h.pool.warmup(warmup_request("pod-c0", h.runtime("python3")))
        resp = await client.post("/v1/funclet/cooldown", json={"ContainerID": "pod-c0"})
        assert resp.status == 200, await resp.text()
        text = await (await client.get("/metrics")).text()
        assert value(text, "faas_mem_usage_bytes_count", function="hello") == 1
        assert value(text, "faas_mem_usage_bytes_sum", function="hello") == 2 << 20  # the fake cgroup's peak
        assert value(text, "easyfaas_code_images_built_total") == 1
        assert value(text, "easyfaas_funclet_sandboxes") == 2
        assert value(text, "easyfaas_oom_kills_total") == 0
        promtool_accepts(text)


async def test_funclet_metrics_listener_serves_nothing_but_metrics_and_health(make_pool: Any) -> None:  # noqa: F811
    h = await make_pool(1)
    api = funclet_app(h.pool)
    scrape = metrics_app(api[METRICS_REGISTRY], api[FUNCLET_METRICS])
    async with TestClient(TestServer(scrape, host="127.0.0.1")) as client:
        assert "easyfaas_funclet_sandboxes" in await (await client.get("/metrics")).text()
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/v1/funclet/list")).status == 404, "the privileged API is not on TCP"


async def test_async_invocations_are_counted_and_the_queue_is_shown(env: Env) -> None:
    import asyncio

    resp = await env.invoke("hello", headers={**H, "X-easyfaas-Invoke-Type": "Event"})
    assert resp.status == 202
    rid = resp.headers["X-easyfaas-Request-Id"]
    # The invocation is counted when the call returns, before the worker settles the event: wait
    # for the event's record to say it left the queue, then the scrape must show both.
    status = ""
    for _ in range(400):
        body = await (await env.client.get(f"/v1/invocations/{rid}", headers=H)).json()
        status = body["Status"]
        if status in ("succeeded", "failed", "expired"):
            break
        await asyncio.sleep(0.05)
    assert status == "succeeded", body
    text = await (await env.client.get("/metrics")).text()
    assert value(text, "faas_invocations_total", function="hello", result="success", trigger="other") == 1
    assert "easyfaas_async_queue_depth" in text and "easyfaas_async_in_flight" in text
    assert value(text, "easyfaas_async_queue_depth", function="hello") == 0
    promtool_accepts(text)


async def test_dead_letters_are_counted_per_function() -> None:
    from tests.fakes.controller_app import make_async_env

    e, cleanup = await make_async_env()
    try:
        e.stubs.event_configs[e.brn("hello")] = {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 60}
        rid = await e.enqueue("hello", {"fail": "boom"})
        assert (await e.finished(rid))["Status"] == "failed"
        text = await (await e.client.get("/metrics")).text()
        assert value(text, "easyfaas_async_dead_letters_total", function="hello") == 1
        assert value(text, "faas_invocations_total", function="hello", result="error") == 1
        promtool_accepts(text)
    finally:
        await cleanup()
