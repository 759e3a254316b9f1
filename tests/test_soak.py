"""Soak: a mixed load of several functions while runtimes are killed at random, then the checks of
"done": every request was answered (a result, an error or 429), the pool is back at its configured
size, its memory accounting back at zero, and no kernel object is left behind.

The short variant runs in the normal suite; the long one (``-m slow``) runs for
``EASYFAAS_SOAK_SECONDS`` (default 180).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import psutil
import pytest

from easyfaas.function_code import b64zip
from tests.pod_harness import NODE_FN, Load, LivePod, live_pod, settled, stored_functions, unique

pytestmark = pytest.mark.e2e

IDLE, MAX = 3, 6
EXEC_FN = "#!/bin/sh\ncat >/dev/null\necho '\"exec ok\"'\n"


@pytest.fixture
async def soak_pod() -> Any:
    for lp in live_pod(container_num=IDLE, funclet_args=("--max-sandboxes", str(MAX)),
                       controller_args=("--max-runtime-idle", "1s", "--queue-timeout", "2s",
                                        "--max-sandbox-idle", "1s", "--queue-length", "20")):
        try:
            yield lp
        finally:
            await lp.close_clients()


async def soak(lp: LivePod, seconds: float) -> None:
    names = [unique("sa"), unique("sb"), unique("snode"), unique("sexec")]
    await lp.create(names[0], PodConcurrentQuota=0)
    await lp.create(names[1], PodConcurrentQuota=3, MemorySize=256)
    await lp.create(names[2], Runtime="nodejs", Code=b64zip({"index.js": NODE_FN}))
    await lp.create(names[3], Runtime="exec", Handler="handler", Code=b64zip({"handler": EXEC_FN}, ("handler",)))
    stored = await stored_functions(lp)
    load = Load(lp, names, workers=8, sleep=0.3)
    load.start()
    kills = 0
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            warm = [r for r in await lp.runtimes() if r["State"] == "warm"]
            if not warm:
                continue
            status, info = await lp.funclet.request_json("GET", f"/v1/funclet/container/{rng.choice(warm)['RuntimeID']}")
            if status != 200 or not info["HostPid"]:
                continue
            try:
                for child in psutil.Process(info["HostPid"]).children():
                    child.kill()  # kill -9 of the runtime
                    kills += 1
            except psutil.NoSuchProcess:
                pass
    finally:
        outcomes = await load.stop()
    print(f"soak {seconds:.0f}s: {kills} runtimes killed, outcomes {dict(outcomes)}")
    assert kills > 0
    assert outcomes["200"] > 0
    assert not load.unexplained, load.unexplained
    assert not any(k.startswith("connection") for k in outcomes), f"unanswered requests: {outcomes}"
    assert set(outcomes) <= {"200", "429 TooManyRequestsException", "500 Runtime.ExitError", "500 Runtime.OutOfMemory", "500 Sandbox.Failed",
                             "500 ServiceException"}, outcomes

    async def at_rest() -> bool:
        res = await lp.resource()
        return (await settled(lp) and res["Sandboxes"]["Total"] == IDLE and res["Reserved"]["Memory"] == 0
                and res["Slots"]["cold"] == IDLE and len(await lp.containers()) == IDLE)

    await lp.until(at_rest, timeout=30, what="the pool back at its idle size with no memory reserved")
    assert await stored_functions(lp) == stored
    for name in names:
        status, body = await lp.invoke(name)
        assert status == 200, body


async def test_short_soak(soak_pod: LivePod) -> None:
    await soak(soak_pod, 12)


@pytest.mark.slow
async def test_soak(soak_pod: LivePod) -> None:
    await soak(soak_pod, float(os.environ.get("EASYFAAS_SOAK_SECONDS", "180")))
