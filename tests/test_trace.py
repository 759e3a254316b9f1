"""Trace context: W3C traceparent parsed, continued and converted to X-Ray's header; its round trip
through the controller (frame ``trace_id``, the response's ``traceparent``, the kept log lines).

Real parts for the round trip: tests/test_controller_api.py's environment (the controller
application on a real server, frame-speaking runtimes on unix sockets). An asynchronous invocation
carries the caller's trace through the queue (tests/test_async_api.py's environment). The real
runtimes' ``_X_AMZN_TRACE_ID`` is checked end to end in tests/test_metrics_prometheus.py and
tests/test_observability_e2e.py.
"""

from __future__ import annotations

import json
import re
from typing import AsyncIterator

import pytest

from easyfaas.trace import TraceContext, continue_trace, parse_traceparent
from tests.fakes.controller_app import H, AsyncEnv, Env, make_async_env, make_env

W3C = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_traceparent() -> None:
    assert parse_traceparent(W3C) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert parse_traceparent(W3C[:-2] + "00")[2] is False
    # A later version may add fields; version 00 may not.
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") is not None
    for bad in ("", "garbage", W3C + "-extra", W3C.upper(), "ff" + W3C[2:],
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"):
        assert parse_traceparent(bad) is None, bad


def test_xray_header_is_awss_conversion() -> None:
    ctx = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "53995c3f42cd8ad8", True)
    assert ctx.xray() == "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=53995c3f42cd8ad8;Sampled=1"
    assert ctx.traceparent() == "00-4bf92f3577b34da6a3ce929d0e0e4736-53995c3f42cd8ad8-01"
    assert TraceContext(ctx.trace_id, ctx.span_id, False).xray().endswith(";Sampled=0")


def test_continue_keeps_the_trace_and_makes_a_new_span() -> None:
    child = continue_trace(W3C)
    assert child.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and child.sampled
    assert re.fullmatch(r"[0-9a-f]{16}", child.span_id) and child.span_id != "00f067aa0ba902b7"
    fresh = continue_trace("not a traceparent")
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.trace_id) and not fresh.sampled, "the caller decides sampling"
    assert fresh.trace_id != continue_trace(None).trace_id
    assert parse_traceparent(fresh.traceparent()) is not None


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, cleanup = await make_env()
    try:
        yield e
    finally:
        await cleanup()


async def test_traceparent_round_trip(env: Env) -> None:
    resp = await env.invoke("hello", {"log": "traced"}, headers={**H, "traceparent": W3C,
                                                                 "X-easyfaas-Request-Id": "t-1"})
    assert resp.status == 200
    back = parse_traceparent(resp.headers["traceparent"])
    assert back is not None and back[0] == "4bf92f3577b34da6a3ce929d0e0e4736" and back[2] is True
    frame = env.requests_seen()[0]
    assert frame["trace_id"] == f"Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent={back[1]};Sampled=1"
    lines = [json.loads(line) for line in
             (await (await env.client.get("/v1/functions/hello/logs", headers=H)).text()).splitlines()]
    assert {line["trace_id"] for line in lines} == {frame["trace_id"]}
    assert lines[-1]["message"] == (f"XRAY TraceId: 1-4bf92f35-77b34da6a3ce929d0e0e4736\tSegmentId: {back[1]}\t"
                                    "Sampled: true")


async def test_a_trace_is_started_when_none_comes(env: Env) -> None:
    resp = await env.invoke("hello")
    back = parse_traceparent(resp.headers["traceparent"])
    assert back is not None
    assert env.requests_seen()[0]["trace_id"].startswith(f"Root=1-{back[0][:8]}-{back[0][8:]};")
    error = await env.invoke("nothere", headers={**H, "traceparent": W3C})
    assert error.status == 404
    assert error.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


@pytest.fixture
async def async_env() -> AsyncIterator[AsyncEnv]:
    e, cleanup = await make_async_env()
    try:
        yield e
    finally:
        await cleanup()


async def test_an_asynchronous_invocation_continues_the_caller_s_trace(async_env: AsyncEnv) -> None:
    rid = await async_env.enqueue("hello", {"log": "later"}, {"traceparent": W3C, "X-easyfaas-Request-Id": "at-1"})
    record = await async_env.finished(rid)
    assert record["Status"] == "succeeded" and record["Traceparent"] == W3C
    frame = next(r for r in async_env.requests_seen() if r["request_id"] == "at-1")
    root, parent, sampled = frame["trace_id"].split(";")
    assert (root, sampled) == ("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736", "Sampled=1")
    assert re.fullmatch(r"Parent=[0-9a-f]{16}", parent) and parent != "Parent=00f067aa0ba902b7", "a span of its own"
    resp = await async_env.client.get("/v1/functions/hello/logs", headers=H, params={"request_id": "at-1"})
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert "later" in [line["message"] for line in lines]
    assert {line["trace_id"] for line in lines} == {frame["trace_id"]}
    # No traceparent, or a malformed one: nothing kept, each attempt starts a trace of its own.
    for n, headers in enumerate(({}, {"traceparent": "garbage"})):
        rid = await async_env.enqueue("hello", {}, {**headers, "X-easyfaas-Request-Id": f"at-{n + 2}"})
        assert "Traceparent" not in await async_env.finished(rid)
        frame = next(r for r in async_env.requests_seen() if r["request_id"] == rid)
        assert frame["trace_id"].startswith("Root=1-") and "4bf92f35" not in frame["trace_id"]
