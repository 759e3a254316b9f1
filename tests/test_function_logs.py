"""Kept function logs: every invocation's output with START / END / REPORT lines, the logs route,
``follow``, owner checks and rotation.

Real parts: the controller application on a real HTTP server, a registry on 127.0.0.1, runtimes
speaking the frame protocol on unix sockets (tests/test_controller_api.py's environment), and the
log files on disk.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from controller.function_logs import FunctionLogs, LogQuery, report_line
from controller.logs_api import FUNCTION_LOGS
from easyfaas.brn import Brn, account_hash
from tests.fakes.controller_app import H, OTHER, Env, make_env
from tests.fakes.stubs_registry import OWNER
from tests.fakes.waiting import until

REPORT = re.compile(r"REPORT RequestId: (\S+)\tDuration: \d+\.\d{2} ms\tBilled Duration: \d+ ms\t"
                    r"Memory Size: 128 MB\tMax Memory Used: \d+ MB\t(Init Duration: \d+\.\d{2} ms\t)?")


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e, cleanup = await make_env()
    try:
        yield e
    finally:
        await cleanup()


async def logs_of(env: Env, name: str = "hello", headers: dict[str, str] | None = None,
                  **params: str) -> list[dict[str, Any]]:
    resp = await env.client.get(f"/v1/functions/{name}/logs", headers=H if headers is None else headers,
                                params=params)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in (await resp.text()).splitlines()]


async def test_sync_invocation_without_tail_is_kept_with_lambda_lines(env: Env) -> None:
    resp = await env.invoke("hello", {"log": "first line\nsecond line"}, headers={**H, "X-easyfaas-Request-Id": "r-1"})
    assert resp.status == 200 and "X-Bce-Log-Result" not in resp.headers
    await env.invoke("hello", {"log": "warm now"}, headers={**H, "X-easyfaas-Request-Id": "r-2"})
    lines = await logs_of(env)
    assert [(l["request_id"], l["stream"], l["message"]) for l in lines[:4]] == [
        ("r-1", "platform", "START RequestId: r-1 Version: $LATEST"),
        ("r-1", "function", "first line"),
        ("r-1", "function", "second line"),
        ("r-1", "platform", "END RequestId: r-1"),
    ]
    assert set(lines[0]) >= {"ts", "request_id", "version", "stream", "message"}
    assert all(l["version"] == "$LATEST" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", l["ts"])
               for l in lines)
    reports = [l["message"] for l in lines if l["message"].startswith("REPORT")]
    assert len(reports) == 2
    first, second = (REPORT.fullmatch(r) for r in reports)
    assert first is not None and second is not None
    assert first.group(1) == "r-1" and first.group(2) is not None, "the cold start has an Init Duration"
    assert second.group(1) == "r-2" and second.group(2) is None, "a warm invocation has none"
    # What the caller sent as traceparent reaches the lines, as X-Ray's header.
    assert lines[0]["trace_id"].startswith("Root=1-")


async def test_max_memory_used_is_the_runtime_s_own_figure(env: Env) -> None:
    # The frame's memory_peak_kb, in MB rounded up: in the kept REPORT line and in the Log-Type tail.
    resp = await env.invoke("hello", {"memory_peak_kb": 41000, "log": "big"},
                            headers={**H, "X-easyfaas-Request-Id": "m-1", "Log-Type": "Tail"})
    assert resp.status == 200
    tail = base64.b64decode(resp.headers["X-Bce-Log-Result"]).decode()
    assert tail.endswith("Memory Size: 128 MB\tMax Memory Used: 41 MB\n"), tail
    await env.invoke("hello", {"memory_peak_kb": 1}, headers={**H, "X-easyfaas-Request-Id": "m-2"})
    reports = {l["request_id"]: l["message"] for l in await logs_of(env) if l["message"].startswith("REPORT")}
    assert "\tMax Memory Used: 41 MB\t" in reports["m-1"]
    assert "\tMax Memory Used: 1 MB\t" in reports["m-2"]
    # A frame whose figure is not a count of KiB is not a valid response (a broken runtime).
    resp = await env.invoke("hello", {"memory_peak_kb": "lots"})
    assert resp.status == 500 and resp.headers["X-easyfaas-Function-Error"] == "Unhandled"


async def test_async_invocation_is_kept(env: Env) -> None:
    resp = await env.invoke("hello", {"log": "in the background"},
                            headers={**H, "X-easyfaas-Invoke-Type": "Event", "X-easyfaas-Request-Id": "ev-1"})
    assert resp.status == 202
    found: list[dict[str, Any]] = []

    async def kept() -> bool:
        found[:] = await logs_of(env, request_id="ev-1")
        return any(l["message"].startswith("REPORT RequestId: ev-1") for l in found)

    for _ in range(100):
        if await kept():
            break
        await asyncio.sleep(0.05)
    assert [l["message"] for l in found][1] == "in the background"
    assert all(l["request_id"] == "ev-1" for l in found)


async def test_query_filters_and_bad_parameters(env: Env) -> None:
    for i in range(3):
        await env.invoke("hello", {"log": f"n{i}"}, headers={**H, "X-easyfaas-Request-Id": f"q-{i}"})
    assert [l["message"] for l in await logs_of(env, request_id="q-1") if l["stream"] == "function"] == ["n1"]
    assert len(await logs_of(env, limit="2")) == 2
    all_lines = await logs_of(env)
    assert await logs_of(env, since="4102444800000") == []  # 2100-01-01
    assert len(await logs_of(env, since="2000-01-01T00:00:00Z", until="2100-01-01T00:00:00Z")) == len(all_lines)
    for params in ({"limit": "0"}, {"limit": "x"}, {"since": "yesterday"}):
        resp = await env.client.get("/v1/functions/hello/logs", headers=H, params=params)
        assert resp.status == 400
        assert (await resp.json())["Code"] == "InvalidParameterValueException"


async def test_only_the_owner_reads_them(env: Env) -> None:
    await env.invoke("hello", {"log": "secret"})
    resp = await env.client.get("/v1/functions/hello/logs")
    assert resp.status == 403 and (await resp.json())["Code"] == "InvalidInvokeCallerException"
    foreign = str(Brn(account_hash(OTHER), "foreign", "$LATEST"))
    resp = await env.client.get(f"/v1/functions/{foreign}/logs", headers=H)
    assert resp.status == 403 and (await resp.json())["Cause"] == f"owner id {OTHER} caller id {OWNER}"
    assert await logs_of(env, foreign, headers={"X-easyfaas-Account-Id": OTHER}) == []
    resp = await env.client.get("/v1/functions/nothere/logs", headers=H)
    assert resp.status == 404


async def test_follow_delivers_a_line_printed_after_it_began(env: Env) -> None:
    await env.invoke("hello", {"log": "before"}, headers={**H, "X-easyfaas-Request-Id": "f-0"})
    resp = await env.client.get("/v1/functions/hello/logs", headers=H, params={"follow": "1"})
    assert resp.status == 200
    seen: list[dict[str, Any]] = []

    async def read_until(marker: str) -> None:
        while not any(l["message"] == marker for l in seen):
            line = await resp.content.readline()
            assert line, "the stream ended early"
            seen.append(json.loads(line))

    await asyncio.wait_for(read_until("before"), 10)
    await env.invoke("hello", {"log": "after"}, headers={**H, "X-easyfaas-Request-Id": "f-1"})
    await asyncio.wait_for(read_until("after"), 10)
    assert [l["request_id"] for l in seen if l["message"] == "after"] == ["f-1"]
    resp.close()
    logs = env.client.server.app[FUNCTION_LOGS]
    await until(lambda: not logs._followers, timeout=5)


async def test_rotation_keeps_the_cap(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path, max_bytes=16384, flush_interval=0.01)
    await logs.start()
    try:
        for i in range(400):
            logs.record("acct", "fn", "1", f"req-{i:04d}", "x" * 100, 1.5, 128, 0, None, None)
            if i % 50 == 0:
                logs.flush()
        logs.flush()
        directory = tmp_path / "acct" / "fn"
        total = sum(p.stat().st_size for p in directory.iterdir())
        assert total <= 16384
        assert len(list(directory.iterdir())) >= 2, "rotated into segments"
        kept = await logs.read("acct", "fn", LogQuery(limit=10000))
        ids = sorted({l["request_id"] for l in kept})
        assert ids[-1] == "req-0399", "the newest are kept"
        assert "req-0000" not in ids, "the oldest were rotated out"
        # A new writer on the same directory knows what is there and keeps the cap.
        again = FunctionLogs(tmp_path, max_bytes=16384)
        for i in range(100):
            again.record("acct", "fn", "1", f"more-{i}", "y" * 100, 1.0, 128, 0, None, None)
        again.flush()
        assert sum(p.stat().st_size for p in directory.iterdir()) <= 16384
    finally:
        await logs.close()


def test_report_line_is_lambdas() -> None:
    assert report_line("id-1", 3071.274, 128, 45, None) == (
        "REPORT RequestId: id-1\tDuration: 3071.27 ms\tBilled Duration: 3072 ms\tMemory Size: 128 MB\t"
        "Max Memory Used: 45 MB\t")
    assert report_line("id-2", 0.2, 256, 0, 812.345).endswith("Billed Duration: 1 ms\tMemory Size: 256 MB\t"
                                                              "Max Memory Used: 0 MB\tInit Duration: 812.35 ms\t")


async def test_logs_survive_a_restart_of_the_writer(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    await logs.start()
    logs.record("a", "f", "$LATEST", "r", "out", 2.0, 128, 0, None, None)
    await logs.close()  # flushes what was pending
    again = FunctionLogs(tmp_path)
    lines = await again.read("a", "f", LogQuery())
    assert [l["message"] for l in lines][:2] == ["START RequestId: r Version: $LATEST", "out"]
    assert os.path.exists(tmp_path / "a" / "f" / "current.jsonl")


async def test_an_invocation_that_drains_at_shutdown_is_kept() -> None:
    from controller.app import OPTIONS

    e, cleanup = await make_env()
    try:
        app = e.client.server.app
        resp = await e.invoke("hello", {"sleep": 0.5, "log": "at the very end"},
                              headers={**H, "X-easyfaas-Invoke-Type": "Event", "X-easyfaas-Request-Id": "late-1"})
        assert resp.status == 202
        await until(lambda: len(e.requests_seen()) == 1, timeout=5)
        await e.client.close()  # shutdown: the event under way drains, then the writer closes
        kept = await FunctionLogs(Path(app[OPTIONS].state_dir) / "function-logs").read(
            account_hash(OWNER), "hello", LogQuery(request_id="late-1"))
        assert [line["message"] for line in kept][1] == "at the very end"
        assert kept[-1]["message"].startswith("REPORT RequestId: late-1")
    finally:
        await cleanup()


async def test_lines_written_one_object_a_line_are_still_read(tmp_path: Path) -> None:
    """Earlier controllers wrote one JSON object per line; a cut line is skipped, not an error."""
    directory = tmp_path / "a" / "f"
    directory.mkdir(parents=True)
    old = {"ts": "2026-01-01T00:00:00.000Z", "request_id": "old", "version": "1", "stream": "platform",
           "message": "START RequestId: old Version: 1"}
    (directory / "current.jsonl").write_text(json.dumps(old) + "\n" + '[1.0, 2.0, "1"' + "\n")
    logs = FunctionLogs(tmp_path)
    logs.record("a", "f", "1", "new", "printed\n", 2.0, 128, 0, None, None)
    lines = await logs.read("a", "f", LogQuery())
    assert lines[0] == old
    assert [(l["request_id"], l["message"]) for l in lines[1:3]] == [
        ("new", "START RequestId: new Version: 1"), ("new", "printed")]


async def test_output_that_is_not_utf8_is_kept_with_a_replacement(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    logs.record("a", "f", "1", "r1", "bad \ud800 text\n", 2.0, 128, 0, None, None)
    logs.record("a", "f", "1", "r2", "fine\n", 2.0, 128, 0, None, None)
    lines = await logs.read("a", "f", LogQuery())
    printed = [l["message"] for l in lines if l["stream"] == "function"]
    assert printed == ["bad ? text", "fine"]
