"""The controller's HTTP API end to end inside one process.

Real parts: the aiohttp application from ``create_app``, a registry served by a real HTTP server on
127.0.0.1 (FakeStubs), and runtimes that speak the frame protocol on real unix sockets
(FrameRuntime, one per sandbox). Only the funclet is in memory (FakeFunclet). All of it is put
together by :func:`tests.fakes.controller_app.make_env`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any, AsyncIterator

import pytest
from structlog.testing import capture_logs

from controller.pool import Phase
from easyfaas.brn import Brn, account_hash
from tests.fakes.controller_app import H, OTHER, Env, make_env
from tests.fakes.stubs_registry import OWNER
from tests.fakes.waiting import until


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, cleanup = await make_env()
    try:
        yield e
    finally:
        await cleanup()


def error_of(body: dict[str, Any]) -> tuple[str, int]:
    return body["Code"], body["Status"]


# ---- plain routes ------------------------------------------------------------------------------

async def test_healthz(env: Env) -> None:
    resp = await env.client.get("/healthz")
    assert resp.status == 200
    assert await resp.text() == "hello controller"


async def test_runtimes_resource_and_invalidate(env: Env) -> None:
    assert (await env.invoke("hello")).status == 200
    runtimes = await (await env.client.get("/v1/runtimes")).json()
    assert [r["RuntimeID"] for r in runtimes] == ["c0", "c1", "c2"]
    warm = [r for r in runtimes if r["State"] == "warm"]
    assert len(warm) == 1
    assert warm[0]["FunctionBrn"] == str(Brn(account_hash(OWNER), "hello", "$LATEST"))
    assert warm[0]["Concurrency"] == 0 and warm[0]["AcceptReqCnt"] == 1 and warm[0]["LastAccessTime"]
    resource = await (await env.client.get("/v1/resource")).json()
    assert set(resource) >= {"Capacity", "Allocatable", "Used", "Marked", "Default", "BaseMemory"}
    assert resource["Marked"]["Memory"] == 128 << 20

    resp = await env.client.post("/v1/runtimes/nope/invalidate")
    assert resp.status == 404
    body = await resp.json()
    assert error_of(body) == ("ResourceNotFoundException", 404) and "nope" in body["Cause"]

    slot_id = warm[0]["RuntimeID"]
    resp = await env.client.post(f"/v1/runtimes/{slot_id}/invalidate")
    assert resp.status == 200
    await until(lambda: env.funclet.ops("reborn") == [slot_id])
    await until(lambda: env.pool.sandboxes[slot_id].phase is Phase.COLD)


# ---- success -----------------------------------------------------------------------------------

async def test_success_body_and_headers(env: Env) -> None:
    resp = await env.invoke("hello", {"k": "v"}, headers={**H, "X-easyfaas-Request-Id": "my-req-1"})
    assert resp.status == 200
    assert await resp.json() == {"k": "v"}
    assert resp.headers["X-easyfaas-Request-Id"] == "my-req-1"
    assert re.fullmatch(r"\d+\.\d{3}", resp.headers["X-easyfaas-Function-Exectime"])
    assert resp.headers["Content-Type"] == "application/json"
    assert "X-easyfaas-Function-Error" not in resp.headers
    frame = env.requests_seen()[0]
    assert frame["request_id"] == "my-req-1" and frame["id"] != "my-req-1"
    # Function logs are kept (--function-logs on): the runtime is always asked for the output.
    assert json.loads(frame["event"]) == {"k": "v"} and frame["log"] is True
    assert frame["deadline_ms"] > 0


async def test_string_result_is_text_and_event_is_passed_verbatim(env: Env) -> None:
    raw = '{"return":  "hi there"}'
    resp = await env.invoke("hello", data=raw)
    assert resp.status == 200
    assert await resp.text() == "hi there"
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert env.requests_seen()[0]["event"] == raw


async def test_empty_body_is_an_empty_object(env: Env) -> None:
    resp = await env.invoke("hello", data=b"")
    assert resp.status == 200
    assert env.requests_seen()[0]["event"] == "{}"


async def test_warm_reuse_and_qualified_names(env: Env) -> None:
    for _ in range(3):
        assert (await env.invoke("hello")).status == 200
    assert len(env.funclet.ops("warmup")) == 1
    brn = Brn(account_hash(OWNER), "hello", "1")
    assert (await env.invoke(str(brn))).status == 200
    assert (await env.invoke("hello", params={"Qualifier": "1"})).status == 200
    # Version 1 is a different identity from $LATEST: a second slot, then reused.
    assert len(env.funclet.ops("warmup")) == 2
    assert env.pool.counters["warm_hit"] == 3


# ---- bad input ---------------------------------------------------------------------------------

async def test_unknown_function_is_404(env: Env) -> None:
    resp = await env.invoke("nosuchfunction")
    assert resp.status == 404
    assert error_of(await resp.json()) == ("ResourceNotFoundException", 404)
    assert resp.headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert resp.headers["X-easyfaas-Request-Id"]


async def test_wrong_or_missing_account_is_403(env: Env) -> None:
    foreign = str(Brn(account_hash(OTHER), "foreign", "$LATEST"))
    resp = await env.invoke(foreign)
    assert resp.status == 403
    body = await resp.json()
    assert error_of(body) == ("InvalidInvokeCallerException", 403)
    assert body["Cause"] == f"owner id {OTHER} caller id {OWNER}"
    resp = await env.invoke("hello", headers={})
    assert resp.status == 403
    assert error_of(await resp.json()) == ("InvalidInvokeCallerException", 403)
    assert env.requests_seen() == []


@pytest.mark.parametrize("ref,params,cause", [
    ("brn:cloud:faas:bj:nothex:function:x:1", None, "invalid brn"),
    ("not:a:brn", None, "invalid brn"),
    (f"brn:cloud:faas:bj:{account_hash(OWNER)}:function:hello:prod", None, "alias"),
    ("hello", {"Qualifier": "prod"}, "invalid function qualifier"),
    ("hello", {"Qualifier": ""}, "invalid function qualifier"),
])
async def test_malformed_reference_is_400(env: Env, ref: str, params: dict[str, str] | None, cause: str) -> None:
    resp = await env.invoke(ref, params=params)
    assert resp.status == 400
    body = await resp.json()
    assert error_of(body) == ("InvalidParameterValueException", 400)
    assert cause in body["Cause"]


async def test_invalid_json_is_400(env: Env) -> None:
    resp = await env.invoke("hello", data=b"{oops")
    assert resp.status == 400
    assert error_of(await resp.json()) == ("InvalidRequestContentException", 400)
    resp = await env.invoke("hello", data=b"\xff\xfe{}")
    assert resp.status == 400


async def test_body_over_6mb_is_413(env: Env) -> None:
    resp = await env.invoke("hello", data=b"[" + b"1," * (3 << 20) + b"1]")
    assert resp.status == 413
    assert error_of(await resp.json()) == ("RequestTooLargeException", 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(7):
            yield b" " * (1 << 20)

    resp = await env.client.post("/v1/functions/hello/invocations", data=chunks(), headers=H)
    assert resp.status == 413
    assert env.requests_seen() == []


# ---- function errors, logs ---------------------------------------------------------------------

async def test_function_error_is_500_unhandled(env: Env) -> None:
    resp = await env.invoke("hello", {"fail": "boom"})
    assert resp.status == 500
    assert resp.headers["X-easyfaas-Function-Error"] == "Unhandled"
    body = await resp.json()
    assert body["errorMessage"] == "boom" and body["errorType"] == "Error" and body["stackTrace"]
    # An ordinary function error keeps the slot warm.
    assert (await env.invoke("hello")).status == 200
    assert len(env.funclet.ops("warmup")) == 1


async def test_fatal_error_recycles_the_slot(env: Env) -> None:
    resp = await env.invoke("hello", {"fatal": True})
    assert resp.status == 500
    await until(lambda: env.funclet.ops("cooldown") != [])
    assert (await env.invoke("hello")).status == 200
    assert len(env.funclet.ops("warmup")) == 2


async def test_log_type_tail(env: Env) -> None:
    resp = await env.invoke("hello", {"log": "printed line", "return": "x"},
                            headers={**H, "Log-Type": "tail", "X-easyfaas-Request-Id": "rid-9"})
    assert resp.status == 200
    text = base64.b64decode(resp.headers["X-Bce-Log-Result"]).decode()
    assert text.startswith("START RequestID: rid-9 Version: $LATEST\nprinted line\nEND RequestID: rid-9\n")
    assert re.search(r"REPORT RequestID: rid-9\tDuration: \d+\.\d{3} ms\tMemory Size: 128 MB\t"
                     r"Max Memory Used: \d+ MB\n$", text)
    assert env.requests_seen()[0]["log"] is True
    resp = await env.invoke("hello", {"log": "y" * 10000}, params={"logType": "Tail"})
    tail = base64.b64decode(resp.headers["X-Bce-Log-Result"])
    assert len(tail) == 4096 and tail.endswith(b"MB\n")
    resp = await env.invoke("hello", {"log": "nope"})
    assert "X-Bce-Log-Result" not in resp.headers


async def test_log_to_body_envelope(env: Env) -> None:
    resp = await env.invoke("hello", {"fail": "bad", "log": "L"}, headers={**H, "Log-To-Body": "true",
                                                                        "Log-Type": "Tail"})
    assert resp.status == 500
    body = await resp.json()
    assert body["FunctionError"] == "Unhandled"
    assert "L\nEND RequestID" in body["LogResult"]
    assert json.loads(body["Payload"])["errorMessage"] == "bad"
    resp = await env.invoke("hello", {"return": "ok"}, params={"logToBody": "true"})
    assert resp.status == 200
    assert await resp.json() == {"Payload": "ok"}


# ---- timeouts, crashes, cold-start failures ----------------------------------------------------

async def test_timeout_returns_500_and_recycles_the_slot(env: Env) -> None:
    resp = await env.invoke("slow", {"sleep": 3}, headers={**H, "X-easyfaas-Request-Id": "rid-t"})
    assert resp.status == 500
    assert resp.headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert await resp.json() == {"errorMessage": "rid-t Task timed out after 1.00 seconds",
                                 "errorType": "Sandbox.Timedout"}
    slot_id = env.funclet.ops("warmup")[0]
    await until(lambda: env.funclet.ops("cooldown") == [slot_id])
    await until(lambda: env.pool.sandboxes[slot_id].phase is Phase.COLD)
    assert all(s.in_flight == 0 for s in env.pool.sandboxes.values())
    assert (await env.invoke("slow")).status == 200


async def test_runtime_crash_is_exit_error(env: Env) -> None:
    resp = await env.invoke("hello", {"crash": True}, headers={**H, "X-easyfaas-Request-Id": "rid-c"})
    assert resp.status == 500
    assert await resp.json() == {"errorMessage": "RequestID: rid-c Process exited before completing request",
                                 "errorType": "Runtime.ExitError"}
    await until(lambda: len(env.funclet.ops("cooldown")) == 1)


async def test_vanished_runtime_socket_is_retried_on_another_slot(env: Env) -> None:
    assert (await env.invoke("hello")).status == 200
    first = env.funclet.ops("warmup")[0]
    await env.runtimes[first].stop()  # the runtime is gone and so is its socket
    resp = await env.invoke("hello", {"n": 2})
    assert resp.status == 200
    assert await resp.json() == {"n": 2}
    second = env.funclet.ops("warmup")[1]
    assert second != first
    await until(lambda: env.funclet.ops("cooldown") == [first])


async def test_init_error_is_500_with_the_error(env: Env) -> None:
    env.funclet.init_error = {"errorMessage": "cannot import index", "errorType": "Runtime.ImportModuleError",
                              "stackTrace": ["x"]}
    resp = await env.invoke("hello")
    assert resp.status == 500
    assert resp.headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert await resp.json() == env.funclet.init_error
    await until(lambda: len(env.funclet.ops("cooldown")) == 1)


async def test_warmup_failure_is_service_error(env: Env) -> None:
    from controller.funclet_client import FuncletError

    env.funclet.warmup_error = FuncletError(500, "ServiceException", "runtime python3 is not prepared")
    resp = await env.invoke("hello")
    assert resp.status == 500
    body = await resp.json()
    assert error_of(body) == ("ServiceException", 500) and "not prepared" in body["Cause"]
    await until(lambda: len(env.funclet.ops("reborn")) == 1)


async def test_no_free_slot_is_429() -> None:
    e, cleanup = await make_env(containers=1, extra_args=("--queue-timeout", "0"))
    try:
        first = asyncio.create_task(e.invoke("hello", {"sleep": 0.5}))
        await until(lambda: e.requests_seen() != [])
        resp = await e.invoke("hello")
        assert resp.status == 429
        assert error_of(await resp.json()) == ("TooManyRequestsException", 429)
        other = await e.invoke("wide")
        assert other.status == 429
        assert (await first).status == 200
        assert e.pool.counters["throttled"] == 2
        assert (await e.invoke("hello")).status == 200
    finally:
        await cleanup()


async def test_concurrent_quota_shares_one_slot() -> None:
    e, cleanup = await make_env(containers=1)
    try:
        resps = await asyncio.gather(*(e.invoke("wide", {"sleep": 0.2, "n": n}) for n in range(4)))
        assert [r.status for r in resps] == [200] * 4
        assert len(e.funclet.ops("warmup")) == 1
        assert e.runtimes["c0"].max_connections == 4
    finally:
        await cleanup()


async def test_client_disconnect_releases_the_slot() -> None:
    e, cleanup = await make_env(containers=1, server_kwargs={"handler_cancellation": True})
    try:
        call = asyncio.create_task(e.invoke("hello", {"sleep": 2}))
        await until(lambda: e.requests_seen() != [])
        slot = e.pool.sandboxes["c0"]
        assert slot.in_flight == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await until(lambda: slot.in_flight == 0)
        assert slot.phase is Phase.WARM
    finally:
        await cleanup()


# ---- asynchronous invocations ------------------------------------------------------------------

async def test_event_invocation_is_202_and_runs_in_background(env: Env) -> None:
    resp = await env.invoke("hello", {"n": "async"}, headers={**H, "X-easyfaas-Invoke-Type": "event",
                                                               "X-easyfaas-Request-Id": "rid-a"})
    assert resp.status == 202
    assert resp.headers["X-easyfaas-Request-Id"] == "rid-a"
    await until(lambda: any(r["request_id"] == "rid-a" for r in env.requests_seen()))
    resp = await env.invoke("nosuch", headers={**H, "X-easyfaas-Invoke-Type": "event"})
    assert resp.status == 404


async def test_shutdown_drains_event_invocations() -> None:
    e, cleanup = await make_env(containers=1)
    with capture_logs() as events:
        resp = await e.invoke("hello", {"sleep": 0.3, "n": "late"},
                              headers={**H, "X-easyfaas-Invoke-Type": "EVENT"})
        assert resp.status == 202
        await until(lambda: e.requests_seen() != [])
        await cleanup()
    # The background invocation ran to completion before the pool closed.
    done = [ev for ev in events if ev["event"] == "invoke_async"]
    assert len(done) == 1
    assert done[0]["status"] == 200 and done[0]["request_id"] == resp.headers["X-easyfaas-Request-Id"]
