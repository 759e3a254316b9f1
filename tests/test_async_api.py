"""Asynchronous invocations through the controller application: the durable enqueue, the workers
(retries, throttles, expiry, dead letters, destinations, callbacks) and the records API.

Real parts: ``create_app`` over TCP, a registry over HTTP (with event-invoke-config), frame
runtimes on unix sockets, the SQLite queue in a temp dir."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.async_api import BUSY_SYNCHRONOUS_CALLS, EVENT_QUEUE, EVENT_WORKERS
from controller.event_queue import QueuedEvent
from controller.options import parse_controller_options
from tests.fakes.controller_app import EVENT, H, AsyncEnv, make_async_env
from tests.fakes.stubs_registry import OWNER
from tests.fakes.waiting import until


@pytest.fixture
async def env() -> AsyncIterator[AsyncEnv]:
    e, cleanup = await make_async_env()
    try:
        yield e
    finally:
        await cleanup()


async def test_accepted_event_runs_and_its_record_says_so(env: AsyncEnv) -> None:
    sync = await env.client.post("/v1/functions/hello/invocations", data=json.dumps({"n": 1}), headers=H)
    rid = await env.enqueue("hello", {"n": 1}, {"X-easyfaas-Request-Id": "rid-1"})
    assert rid == "rid-1"
    body = await env.finished(rid)
    assert set(body) == {"RequestId", "FunctionArn", "Status", "Attempts", "EnqueuedAt", "StartedAt",
                         "FinishedAt", "Result", "Error", "LogResult"}
    assert body["Status"] == "succeeded" and body["Attempts"] == 1 and body["Error"] is None
    assert body["Result"] == await sync.text()  # what a synchronous call answers
    assert body["FunctionArn"] == env.brn("hello") + ":$LATEST"
    assert body["LogResult"] and body["EnqueuedAt"].endswith("Z")
    assert [r for r in env.requests_seen() if r["request_id"] == "rid-1"]


async def test_synchronous_calls_in_flight_make_the_queue_pace_its_commits(env: AsyncEnv) -> None:
    queue = env.client.server.app[EVENT_QUEUE]
    assert queue.busy is not None and not queue.busy()
    few = [asyncio.get_running_loop().create_task(env.client.post(
        "/v1/functions/hello/invocations", data=json.dumps({"sleep": 0.5}), headers=H))
        for _ in range(BUSY_SYNCHRONOUS_CALLS - 1)]
    await asyncio.sleep(0.2)
    assert not queue.busy()  # a few callers do not count as busy
    more = [asyncio.get_running_loop().create_task(env.client.post(
        "/v1/functions/hello/invocations", data=json.dumps({"sleep": 1.0}), headers=H)) for _ in range(2)]
    await until(queue.busy, timeout=10)
    rid = await env.enqueue("hello", {"n": 1})  # accepted while busy: durable all the same
    for resp in await asyncio.gather(*few, *more):
        assert resp.status == 200
    assert not queue.busy()
    body = await env.finished(rid)
    assert body["Status"] == "succeeded"


async def test_records_are_the_owners_only(env: AsyncEnv) -> None:
    rid = await env.enqueue("hello", {})
    status, body = await env.record(rid, account="intruder")
    assert status == 403 and body["Code"] == "InvalidInvokeCallerException"
    status, body = await env.record("no-such-id")
    assert status == 404 and body["Code"] == "ResourceNotFoundException"
    resp = await env.client.get(f"/v1/invocations/{rid}")
    assert resp.status == 403  # no account header at all


async def test_listing_filters_and_validation(env: AsyncEnv) -> None:
    first = await env.enqueue("hello", {"n": 1})
    second = await env.enqueue("dest", {"n": 2})
    await env.finished(first)
    await env.finished(second)
    resp = await env.client.get("/v1/invocations", headers=H)
    ids = [r["RequestId"] for r in (await resp.json())["Invocations"]]
    assert ids[:2] == [second, first]
    resp = await env.client.get("/v1/invocations", headers=H, params={"FunctionName": "hello", "Limit": "10"})
    assert [r["RequestId"] for r in (await resp.json())["Invocations"]] == [first]
    resp = await env.client.get("/v1/invocations", headers=H, params={"Status": "failed"})
    assert (await resp.json())["Invocations"] == []
    for params, field in (({"Status": "done"}, "Status"), ({"Limit": "0"}, "Limit"), ({"Limit": "x"}, "Limit"),
                          ({"FunctionName": "bad name!"}, "")):
        resp = await env.client.get("/v1/invocations", headers=H, params=params)
        assert resp.status == 400
        assert (await resp.json())["Cause"].startswith(field)


async def test_function_errors_retry_then_dead_letter_and_reach_the_destination(env: AsyncEnv) -> None:
    env.stubs.event_configs[env.brn("hello")] = {
        "MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 60,
        "DestinationConfig": {"OnFailure": {"Destination": env.brn("dest")}, "OnSuccess": {}}}
    rid = await env.enqueue("hello", {"fail": "boom"})
    body = await env.finished(rid)
    assert body["Status"] == "failed" and body["Attempts"] == 2
    assert body["Error"]["errorMessage"] == "boom"
    resp = await env.client.get("/v1/dead-letters", headers=H, params={"FunctionName": "hello"})
    letters = (await resp.json())["DeadLetters"]
    assert [d["RequestId"] for d in letters] == [rid] and json.loads(letters[0]["Payload"]) == {"fail": "boom"}

    def destination_records() -> list[dict[str, Any]]:
        out = []
        for r in env.requests_seen():
            event = json.loads(r["event"])
            if isinstance(event, dict) and "requestContext" in event:
                out.append(event)
        return out
    await until(lambda: destination_records() != [], timeout=20)
    record = destination_records()[0]
    assert record["version"] == "1.0"
    assert record["requestContext"] == {"requestId": rid, "functionArn": env.brn("hello") + ":$LATEST",
                                        "condition": "RetriesExhausted", "approximateInvokeCount": 2}
    assert record["requestPayload"] == {"fail": "boom"}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "boom"

    # Redrive: attempts reset, it runs (and fails) again; then delete the dead letter.
    resp = await env.client.post(f"/v1/dead-letters/{rid}/redrive", headers=H)
    assert resp.status == 202 and (await resp.json())["Attempts"] == 0
    body = await env.finished(rid)
    assert body["Status"] == "failed" and body["Attempts"] == 2
    assert (await env.client.post(f"/v1/dead-letters/{rid}/redrive",
                                  headers={"X-easyfaas-Account-Id": "intruder"})).status == 403
    assert (await env.client.delete(f"/v1/dead-letters/{rid}", headers=H)).status == 204
    assert (await env.client.delete(f"/v1/dead-letters/{rid}", headers=H)).status == 404
    assert (await env.client.post("/v1/dead-letters/nope/redrive", headers=H)).status == 404


async def test_success_destination_gets_the_success_record(env: AsyncEnv) -> None:
    env.stubs.event_configs[env.brn("hello")] = {
        "MaximumRetryAttempts": 0, "DestinationConfig": {"OnSuccess": {"Destination": env.brn("dest")}}}
    rid = await env.enqueue("hello", {"n": "ok"})
    await env.finished(rid)

    def found() -> list[dict[str, Any]]:
        return [e for e in (json.loads(r["event"]) for r in env.requests_seen())
                if isinstance(e, dict) and e.get("requestContext", {}).get("requestId") == rid]
    await until(lambda: found() != [], timeout=20)
    record = found()[0]
    assert record["requestContext"]["condition"] == "Success"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}


async def test_zero_retries_fail_at_once(env: AsyncEnv) -> None:
    env.stubs.event_configs[env.brn("hello")] = {"MaximumRetryAttempts": 0}
    body = await env.finished(await env.enqueue("hello", {"fail": "once"}))
    assert body["Status"] == "failed" and body["Attempts"] == 1


async def test_old_event_expires_into_the_dead_letters(env: AsyncEnv) -> None:
    env.stubs.event_configs[env.brn("hello")] = {"MaximumEventAgeInSeconds": 60}
    queue = env.client.server.app[EVENT_QUEUE]
    brn = env.brn("hello")
    await queue.enqueue(QueuedEvent("old-one", brn, brn + ":$LATEST", OWNER, '{"n": 0}', time.time() - 120))
    body = await env.finished("old-one")
    assert body["Status"] == "expired" and body["Error"]["errorType"] == "EventAgeExceeded"
    assert not [r for r in env.requests_seen() if r["request_id"] == "old-one"]  # never ran
    resp = await env.client.get("/v1/dead-letters", headers=H)
    assert [d["RequestId"] for d in (await resp.json())["DeadLetters"]] == ["old-one"]


async def test_throttle_requeues_without_counting_the_attempt() -> None:
    e, cleanup = await make_async_env("--queue-timeout", "0", containers=1)
    try:
        sync = asyncio.create_task(e.client.post("/v1/functions/hello/invocations",
                                                 data=json.dumps({"sleep": 1.0}), headers=H))
        await until(lambda: e.requests_seen() != [])
        rid = await e.enqueue("hello", {"n": "after"})
        body = await e.finished(rid)
        assert (await sync).status == 200
        assert body["Status"] == "succeeded" and body["Attempts"] == 1
    finally:
        await cleanup()


async def test_an_event_leased_ahead_goes_back_uncounted_when_the_controller_stops() -> None:
    # Room for two of the function's events (2 sandboxes, share 1), one worker to run them.
    e, cleanup = await make_async_env("--event-workers", "1", "--event-concurrency-share", "1", containers=2)
    try:
        queue = e.client.app[EVENT_QUEUE]
        workers = e.client.app[EVENT_WORKERS]
        # Long enough to hold the worker while the second is leased, well inside the function's 3 s
        # timeout (at 3.0 s a loaded machine could time it out, and the attempt was a failure).
        first = await e.enqueue("hello", {"sleep": 1.5})
        await until(lambda: e.requests_seen() != [], timeout=5.0)
        second = await e.enqueue("hello", {"n": 2})
        # The one worker is busy: the second is leased ahead and waits for it.
        await until(lambda: workers.in_flight == 2, timeout=5.0)
        status, body = await e.record(second)
        assert status == 200 and body["Status"] == "running" and body["Attempts"] == 1
        await e.client.close()  # a clean stop: the running event finishes, the waiting one goes back
        db = sqlite3.connect(queue.path)
        try:
            rows = dict(db.execute("SELECT request_id, status || ':' || attempts FROM invocations"))
        finally:
            db.close()
        assert rows == {first: "succeeded:1", second: "queued:0"}
    finally:
        await cleanup()


async def test_over_the_bound_the_enqueue_is_429() -> None:
    e, cleanup = await make_async_env("--event-queue-length", "2", "--event-workers", "1", containers=1)
    try:
        await e.enqueue("hello", {"sleep": 1})
        await e.enqueue("hello", {"sleep": 1})
        resp = await e.client.post("/v1/functions/hello/invocations", data="{}", headers=EVENT)
        assert resp.status == 429 and (await resp.json())["Code"] == "TooManyRequestsException"
        resp = await e.client.post("/v1/functions/dest/invocations", data="{}", headers=EVENT)
        assert resp.status == 202  # the bound is per function
    finally:
        await cleanup()


async def test_bad_requests_are_refused_before_the_queue(env: AsyncEnv) -> None:
    resp = await env.client.post("/v1/functions/hello/invocations", data="{}",
                                 headers={**EVENT, "X-easyfaas-Callback-Url": "file:///etc/passwd"})
    assert resp.status == 400 and "Callback-Url" in (await resp.json())["Cause"]
    resp = await env.client.post("/v1/functions/hello/invocations", data=json.dumps({"x": "y" * (1 << 20)}),
                                 headers=EVENT)
    assert resp.status == 413
    resp = await env.client.post("/v1/functions/foreign/invocations", data="{}", headers=EVENT)
    assert resp.status in (403, 404)
    resp = await env.client.get("/v1/invocations", headers=H)
    assert (await resp.json())["Invocations"] == []


async def test_callback_gets_the_result(env: AsyncEnv) -> None:
    got: list[tuple[dict[str, str], bytes]] = []
    attempts = {"n": 0}

    async def receive(request: web.Request) -> web.Response:
        attempts["n"] += 1
        if attempts["n"] == 1:
            return web.Response(status=503)  # the first delivery fails: it is retried
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)
    app = web.Application()
    app.router.add_post("/hook", receive)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/hook"))
        rid = await env.enqueue("hello", {"n": "cb"}, {"X-easyfaas-Callback-Url": url})
        body = await env.finished(rid)
        await until(lambda: got != [], timeout=20)
        headers, payload = got[0]
        assert headers["X-easyfaas-Request-Id"] == rid and headers["X-easyfaas-Invocation-Status"] == "succeeded"
        assert payload.decode() == body["Result"]

        async def noted() -> Any:
            return (await env.record(rid))[1].get("Callback")
        deadline = time.monotonic() + 10
        while await noted() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await noted() == {"Url": url, "Delivered": True, "Attempts": 2, "Error": None}

        # An unreachable URL: retried, then the failure is recorded (and the queue went on).
        dead_url = str(server.make_url("/nowhere"))
        rid2 = await env.enqueue("hello", {"n": "cb2"}, {"X-easyfaas-Callback-Url": dead_url})
        await env.finished(rid2)
        deadline = time.monotonic() + 30
        while (await env.record(rid2))[1].get("Callback") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        failed = (await env.record(rid2))[1]["Callback"]
        assert failed["Delivered"] is False and failed["Error"] == "HTTP 404" and failed["Attempts"] == 4
    finally:
        await server.close()


async def test_queue_depth_route(env: AsyncEnv) -> None:
    resp = await env.client.get("/v1/event-queue")
    body = await resp.json()
    assert resp.status == 200 and body["Total"] == 0 and body["InFlight"] == 0


@pytest.mark.parametrize("args", [("--event-queue", "redis://x"), ("--event-concurrency-share", "0"),
                                  ("--event-concurrency-share", "1.5"), ("--event-workers", "0"),
                                  ("--event-queue-length", "0")])
def test_bad_event_options_stop_the_controller(args: tuple[str, str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_controller_options(list(args))
    assert args[0] in str(info.value)


def test_event_queue_location_picks_the_backend(tmp_path: Any) -> None:
    from controller.event_queue import open_event_queue
    from controller.event_queue.nats_backend import NatsEventQueue
    from controller.event_queue.sqlite_backend import SQLiteEventQueue

    kw = dict(max_queued_per_function=1, max_queued=1, record_ttl=1.0, max_records=1)
    default = open_event_queue("", str(tmp_path / "state"), **kw)  # type: ignore[arg-type]
    assert isinstance(default, SQLiteEventQueue) and default.path.parent == tmp_path / "state"
    other = open_event_queue(f"sqlite://{tmp_path / 'q'}", str(tmp_path / "state"), **kw)  # type: ignore[arg-type]
    assert isinstance(other, SQLiteEventQueue) and other.path.parent == tmp_path / "q"
    assert isinstance(open_event_queue("nats://127.0.0.1:4222", "", **kw), NatsEventQueue)  # type: ignore[arg-type]
