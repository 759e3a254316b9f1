"""What an invocation's REPORT and trace context say, with real functions in real sandboxes of the
shared test pod: "Max Memory Used" is the runtime process's own peak (the response frame's
``memory_peak_kb``) in the log tail and in the kept logs, for the Python, Node.js and ``provided``
runtimes; an asynchronous invocation with a ``traceparent`` runs in the caller's trace, which the
function sees as ``_X_AMZN_TRACE_ID`` and its kept log lines carry.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT
from tests.lambda_harness import call, deploy, http, python_bootstrap  # noqa: F401 - http: fixture

pytestmark = pytest.mark.e2e

H = {"X-easyfaas-Account-Id": ACCOUNT}
CALLER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CALLER_XRAY_ROOT = "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736"
MAX_MEMORY = re.compile(r"\tMax Memory Used: (\d+) MB(\t|\n|$)")

# Each allocates ``alloc_mb`` MiB and touches every page (so that it is resident), then keeps it
# until the invocation ends; each also returns and prints the invocation's _X_AMZN_TRACE_ID.
PY_FN = """\
import os
def handler(event, context):
    hog = b"x" * (event.get("alloc_mb", 0) << 20)
    trace = os.environ.get("_X_AMZN_TRACE_ID", "")
    print("trace is", trace)
    return {"trace": trace, "held": len(hog)}
"""
NODE_FN = """\
exports.handler = async (event) => {
  const hog = Buffer.alloc((event.alloc_mb || 0) << 20, 1);
  const trace = process.env._X_AMZN_TRACE_ID || '';
  console.log('trace is', trace);
  return { trace, held: hog.length };
};
"""
PROVIDED_BOOTSTRAP = python_bootstrap("""
while True:
    event, request_id = next_event()
    hog = b"x" * (event.get("alloc_mb", 0) << 20)
    respond(request_id, {"held": len(hog)})
    del hog
""")
FUNCTIONS = {"python3": {"index.py": PY_FN}, "nodejs": {"index.js": NODE_FN}, "provided": PROVIDED_BOOTSTRAP}


async def deploy_fn(http: aiohttp.ClientSession, runtime: str) -> str:
    executable = ("bootstrap",) if runtime == "provided" else ()
    return await deploy(http, runtime, FUNCTIONS[runtime], executable=executable)  # type: ignore[arg-type]


async def kept_lines(http: aiohttp.ClientSession, name: str, request_id: str) -> list[dict[str, Any]]:
    """The kept log lines of one invocation, once its REPORT line is written."""
    lines: list[dict[str, Any]] = []
    for _ in range(200):
        async with http.get(f"{http.pod.config.controller_url}/v1/functions/{name}/logs",  # type: ignore[attr-defined]
                            headers=H, params={"request_id": request_id}) as resp:
            assert resp.status == 200, await resp.text()
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        if any(line["message"].startswith("REPORT") for line in lines):
            return lines
        await asyncio.sleep(0.1)
    raise AssertionError(f"no REPORT line kept for {request_id}: {lines}")


def max_memory_of(text: str) -> int:
    found = MAX_MEMORY.search(text)
    assert found is not None, text
    return int(found.group(1))


@pytest.mark.parametrize("runtime", ["python3", "nodejs", "provided"])
async def test_max_memory_used_is_the_sandbox_s_peak(http: aiohttp.ClientSession, runtime: str) -> None:
    name = await deploy_fn(http, runtime)
    small = await call(http, name, {})
    assert small.status == 200, small
    small_mb = max_memory_of(small.log)
    assert 0 < small_mb < 100, small.log  # a runtime's own few MB
    big = await call(http, name, {"alloc_mb": 40})
    assert big.status == 200 and big.json()["held"] == 40 << 20, big
    big_mb = max_memory_of(big.log)
    assert big_mb >= 40 and big_mb >= small_mb + 39, (small.log, big.log)
    # The kept REPORT lines say the same as the tails.
    for reply, mb in ((small, small_mb), (big, big_mb)):
        report = next(line["message"] for line in await kept_lines(http, name, reply.request_id)
                      if line["message"].startswith("REPORT"))
        assert report.startswith(f"REPORT RequestId: {reply.request_id}\t") and max_memory_of(report) == mb


@pytest.mark.parametrize("runtime", ["python3", "nodejs"])
async def test_an_asynchronous_call_runs_in_the_caller_s_trace(http: aiohttp.ClientSession, runtime: str) -> None:
    name = await deploy_fn(http, runtime)
    base = http.pod.config.controller_url  # type: ignore[attr-defined]
    async with http.post(f"{base}/v1/functions/{name}/invocations", data=b"{}",
                         headers={**H, "X-easyfaas-Invoke-Type": "event", "traceparent": CALLER_TRACE}) as resp:
        assert resp.status == 202, await resp.text()
        request_id = resp.headers["X-easyfaas-Request-Id"]
    record: dict[str, Any] = {}
    for _ in range(300):
        async with http.get(f"{base}/v1/invocations/{request_id}", headers=H) as resp:
            record = await resp.json()
        if record.get("Status") == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert record.get("Status") == "succeeded", record
    assert record["Traceparent"] == CALLER_TRACE
    trace = json.loads(record["Result"])["trace"]
    root, parent, sampled = trace.split(";")
    assert (root, sampled) == (CALLER_XRAY_ROOT, "Sampled=1"), trace
    assert re.fullmatch(r"Parent=[0-9a-f]{16}", parent) and parent != "Parent=00f067aa0ba902b7", trace
    lines = await kept_lines(http, name, request_id)
    assert any(line["message"].endswith(f"trace is {trace}") for line in lines), lines
    assert {line["trace_id"] for line in lines} == {trace}
