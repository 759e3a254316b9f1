"""``_X_AMZN_TRACE_ID`` per invocation in the Python and Node.js runtimes, as plain processes
(tests/runtime_harness.py): the handler sees each invocation's own trace id, none when the frame
carries none, and a warm runtime does not grow with the number of distinct trace ids it has seen.

Set through setenv(3), every trace id stayed in the process (glibc never frees a replaced
string): a warm Python runtime at ~17k calls/s reached its 64 MiB limit within a minute and was
OOM-killed. The growth bounds below are a tenth (Python) and half (Node.js, whose heap alone
swings by ~10 MB) of what that leak adds over the same calls.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Iterator

import pytest

from tests.runtime_harness import RuntimeProcess, started_runtime

# Per runtime: calls to warm up, calls measured, bytes setenv kept per distinct trace id, and the
# share of that leak the growth must stay under.
GROWTH = {"python": (5_000, 40_000, 140, 0.1), "nodejs": (50_000, 150_000, 185, 0.5)}

PYTHON_HANDLER = """
    import os
    import subprocess

    def handler(event, context):
        if event.get("child"):
            env = subprocess.run(["/usr/bin/env"], capture_output=True, text=True, env=os.environ).stdout
            return {"trace": os.environ.get("_X_AMZN_TRACE_ID"), "child": env}
        return {"trace": os.environ.get("_X_AMZN_TRACE_ID")}
"""
NODE_HANDLER = """
    const { execFileSync } = require('node:child_process');
    exports.handler = async (event) => {
      const trace = process.env._X_AMZN_TRACE_ID === undefined ? null : process.env._X_AMZN_TRACE_ID;
      if (event.child) return { trace, child: execFileSync('/usr/bin/env').toString() };
      if (event.tz) {
        process.env.TZ = event.tz;
        return { trace, tz: process.env.TZ, offset: new Date(Date.UTC(2026, 6, 1)).getTimezoneOffset() };
      }
      process.env.NUMBER = 7;
      return { trace, number: process.env.NUMBER };
    };
"""


def trace_id(n: int) -> str:
    return f"Root=1-{n:08x}-{n:024x};Parent={n:016x};Sampled=0"


def frame(n: int, **event: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f"r{n}", "event": json.dumps(event), "log": False,
                            "deadline_ms": int(time.time() * 1000) + 60_000}
    if n >= 0:
        body["trace_id"] = trace_id(n)
    return body


def result(response: dict[str, Any]) -> dict[str, Any]:
    assert response["ok"], response
    return json.loads(response["result"])


def started(kind: str) -> contextlib.AbstractContextManager[RuntimeProcess]:
    return started_runtime(kind, PYTHON_HANDLER, NODE_HANDLER, "ef-trace-")


@pytest.fixture(params=["python", "nodejs"])
def runtime(request: pytest.FixtureRequest) -> Iterator[RuntimeProcess]:
    with started(request.param) as rt:
        rt.kind = request.param  # type: ignore[attr-defined]
        yield rt


def test_each_invocation_sees_its_own_trace_id_and_none_without_one(runtime: RuntimeProcess) -> None:
    responses = runtime.invoke_many([frame(1), frame(2), frame(-1), frame(3)])
    assert [result(r)["trace"] for r in responses] == [trace_id(1), trace_id(2), None, trace_id(3)]


def test_a_child_given_the_environment_inherits_the_trace_id(runtime: RuntimeProcess) -> None:
    [response] = runtime.invoke_many([frame(41, child=True)])
    child_env = result(response)["child"].splitlines()
    assert f"_X_AMZN_TRACE_ID={trace_id(41)}" in child_env
    assert "EASYFAAS_FUNCTION_NAME=fn-test" in child_env  # the rest of the environment with it


def test_a_warm_runtime_does_not_grow_with_distinct_trace_ids(runtime: RuntimeProcess) -> None:
    warmup, calls, leak_per_call, share = GROWTH[runtime.kind]  # type: ignore[attr-defined]
    runtime.invoke_many([frame(n) for n in range(warmup)])
    before = runtime.rss_kb()
    responses = runtime.invoke_many([frame(n) for n in range(warmup, warmup + calls)])
    grown_kb = runtime.rss_kb() - before
    assert result(responses[-1])["trace"] == trace_id(warmup + calls - 1)
    assert grown_kb * 1024 < calls * leak_per_call * share, f"grew {grown_kb} KiB over {calls} calls"


def test_nodejs_environment_keeps_process_env_rules() -> None:
    with started("nodejs") as rt:
        [plain, zoned] = rt.invoke_many([frame(5), frame(6, tz="America/New_York")])
    assert result(plain)["number"] == "7"  # a value is stored as a string, as process.env does
    # Setting TZ still changes the time zone: Node resets it only through the real environment.
    assert result(zoned) == {"trace": trace_id(6), "tz": "America/New_York", "offset": 240}
