"""Pool lifecycle end to end, with real sandboxes: cooldown, reborn after kill -9, OOM, elastic growth
and shrink, the bounded queue and 429, reserved concurrency, and the funclet's health reports.

One pod for the module (2 idle sandboxes, up to 5), with timers short enough that each test takes
seconds, started by ``live_pod`` (tests/pod_harness.py).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from typing import AsyncIterator, Iterator

import psutil
import pytest

import controller.invoke
from easyfaas.function_code import b64zip
from tests.pod_harness import LivePod, live_pod, unique

pytestmark = pytest.mark.e2e

# invoke.py reports what the pool knows about a dead runtime once it calls Pool.runtime_failure.
INVOKE_EXPLAINS_EXITS = "runtime_failure" in inspect.getsource(controller.invoke)


@pytest.fixture(scope="module")
def lp() -> Iterator[LivePod]:
    yield from live_pod(
        container_num=2, funclet_args=("--max-sandboxes", "5"),
        controller_args=("--max-runtime-idle", "1s", "--queue-timeout", "4s", "--queue-length", "3",
                         "--max-sandbox-idle", "1s", "--min-free-sandboxes", "1"),
        scaling={"capped": {"reserved-concurrency": 1}, "kept": {"min": 1, "zero-duration": "0.5s"},
                 "frozen": {"zero-duration": "60s"}})


@pytest.fixture
async def pod(lp: LivePod) -> AsyncIterator[LivePod]:
    # Each test starts from the idle pool: nothing warm, nothing queued, memory all released.
    await lp.until(lambda: _idle(lp), timeout=30, what="the pool back at its idle size")
    try:
        yield lp
    finally:
        await lp.close_clients()


async def _idle(lp: LivePod) -> bool:
    res = await lp.resource()
    kept = {r["RuntimeID"] for r in await lp.runtimes() if ":function:kept" in r["FunctionBrn"]}
    return (res["Sandboxes"]["Total"] - len(kept) <= 2 and res["Queue"]["Waiting"] == 0
            and res["Reserved"]["Memory"] == 128 * len(kept) << 20 and res["Slots"]["cold"] + len(kept) == res["Sandboxes"]["Total"])


# ---- cooldown ----------------------------------------------------------------------------------

async def test_idle_sandbox_is_cooled_down_and_returns_to_the_pool(pod: LivePod) -> None:
    name = unique("cool")
    await pod.create(name)
    status, body = await pod.invoke(name)
    assert status == 200, body
    slot = await pod.slot_of(name)
    assert slot["State"] == "warm" and slot["ReservedMemory"] == 128 << 20
    started = time.monotonic()

    async def cooled() -> bool:
        r = next(r for r in await pod.runtimes() if r["RuntimeID"] == slot["RuntimeID"])
        return r["State"] == "cold" and r["Available"] and not r["FunctionBrn"]

    await pod.until(cooled, what="the idle sandbox cooled down")
    assert time.monotonic() - started >= 0.5, "cooled down before --max-runtime-idle"
    res = await pod.resource()
    assert res["Reserved"]["Memory"] == 0 and res["Counters"]["reset"] >= 1
    info = next(c for c in await pod.containers() if c["ContainerID"] == slot["RuntimeID"])
    assert info["State"] == "cold" and info["Resource"]["Memory"] == 128 << 20
    status, again = await pod.invoke(name)
    assert status == 200 and again["token"] != body["token"], "a cooled sandbox starts the function afresh"


async def test_scale_min_keeps_a_sandbox_warm(pod: LivePod) -> None:
    await pod.create("kept")
    status, body = await pod.invoke("kept")
    assert status == 200, body
    await asyncio.sleep(2.5)  # well past its zero-duration (0.5 s) and the pool's idle time (1 s)
    status, again = await pod.invoke("kept")
    assert status == 200 and again["token"] == body["token"], "scale.min kept the same runtime warm"
    slot = await pod.slot_of("kept")
    # Killing it: the pool warms a new one by itself.
    os.kill(await pod.runtime_pid(slot["RuntimeID"]), signal.SIGKILL)

    async def rewarmed() -> bool:
        slots = [r for r in await pod.runtimes() if ":function:kept:" in r["FunctionBrn"] and r["State"] == "warm"]
        return bool(slots) and slots[0]["Prewarmed"]

    await pod.until(rewarmed, what="a new sandbox pre-warmed for the kept function")
    status, third = await pod.invoke("kept")
    assert status == 200 and third["token"] != body["token"]


# ---- health and reborn ---------------------------------------------------------------------------

async def test_kill_9_of_a_runtime_fails_only_its_request_and_is_rebuilt(pod: LivePod) -> None:
    name = unique("victim")
    await pod.create(name)
    status, first = await pod.invoke(name)
    assert status == 200
    slot = await pod.slot_of(name)
    call = asyncio.create_task(pod.invoke(name, {"sleep": 20}))
    await asyncio.sleep(0.5)
    os.kill(await pod.runtime_pid(slot["RuntimeID"]), signal.SIGKILL)
    status, body = await asyncio.wait_for(call, 10)
    assert status == 500, body
    assert body["errorType"] in ("Runtime.ExitError", "Sandbox.Failed")
    assert "Process exited before completing request" in body["errorMessage"]
    if INVOKE_EXPLAINS_EXITS:
        assert "SIGKILL" in body["errorMessage"], body
    res = await pod.resource()
    assert res["Counters"]["runtime_exit"] >= 1
    status, again = await pod.invoke(name)
    assert status == 200 and again["token"] != first["token"]


async def test_oom_kill_stays_inside_the_sandbox_and_says_so(pod: LivePod) -> None:
    name = unique("hog")
    await pod.create(name, MemorySize=64)
    status, body = await pod.invoke(name, {"alloc": 8})
    assert status == 200 and body["allocated"] == 8 << 20, body
    before = (await pod.resource())["Counters"]["oom_kill"]
    status, body = await pod.invoke(name, {"alloc": 200})
    assert status == 500, body
    assert body["errorType"] in ("Runtime.OutOfMemory", "Runtime.ExitError"), body
    if INVOKE_EXPLAINS_EXITS:
        assert body["errorType"] == "Runtime.OutOfMemory" and "memory limit of 64 MB" in body["errorMessage"], body

    async def counted() -> bool:
        return (await pod.resource())["Counters"]["oom_kill"] > before

    await pod.until(counted, what="the OOM kill counted")
    # The kernel killed inside the function's cgroup only: the pod and its other sandboxes live on.
    assert all(pod.pod.pid(d) for d in ("funclet", "stubs", "controller"))
    status, body = await pod.invoke(name, {"alloc": 8})
    assert status == 200, body


async def test_stopped_runner_is_declared_defunct_and_rebuilt(pod: LivePod) -> None:
    name = "frozen"  # not cooled down for a minute: only the health pings can notice the runner
    await pod.create(name)
    assert (await pod.invoke(name))[0] == 200
    slot = await pod.slot_of(name)
    status, info = await pod.funclet.request_json("GET", f"/v1/funclet/container/{slot['RuntimeID']}")
    runner = info["HostPid"]
    os.kill(runner, signal.SIGSTOP)
    try:
        async def rebuilt() -> bool:
            s, i = await pod.funclet.request_json("GET", f"/v1/funclet/container/{slot['RuntimeID']}")
            return s == 200 and i["HostPid"] not in (0, runner) and i["State"] == "cold"

        await pod.until(rebuilt, timeout=20, what="the silent runner's sandbox rebuilt")
    finally:
        try:
            os.kill(runner, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert not psutil.pid_exists(runner) or psutil.Process(runner).status() == psutil.STATUS_ZOMBIE
    assert (await pod.resource())["Counters"]["runner_defunct"] >= 1
    status, _ = await pod.invoke(name)
    assert status == 200
    slot = await pod.slot_of(name)
    async with pod.session().post(f"{pod.config.controller_url}/v1/runtimes/{slot['RuntimeID']}/invalidate") as r:
        assert r.status == 200  # back to the idle pool for the next test


# ---- the elastic pool, the queue, concurrency limits -----------------------------------------------

async def test_pool_grows_under_a_burst_and_shrinks_back(pod: LivePod) -> None:
    name = unique("burst")
    await pod.create(name, PodConcurrentQuota=0)
    burst = 5 - await _held(pod)
    results = await asyncio.gather(*(pod.invoke(name, {"sleep": 1, "n": n}) for n in range(burst)))
    assert [r[0] for r in results] == [200] * burst, results
    assert len({r[1]["token"] for r in results}) == burst, "one sandbox per request of the burst"
    res = await pod.resource()
    assert res["Sandboxes"]["Total"] == 5 and res["Sandboxes"]["Max"] == 5
    assert res["Counters"]["grown"] >= 3
    assert len(await pod.containers()) == 5

    async def shrunk() -> bool:
        return len(await pod.containers()) == 2 and len(await pod.runtimes()) == 2

    await pod.until(shrunk, timeout=20, what="the pool shrunk back to its idle size")
    assert (await pod.resource())["Counters"]["shrunk"] >= 3


async def test_bounded_queue_then_429(pod: LivePod) -> None:
    name = unique("queued")
    await pod.create(name, PodConcurrentQuota=0)
    room = 5 - await _held(pod)
    running = [asyncio.create_task(pod.invoke(name, {"sleep": 1.5, "n": n})) for n in range(room)]
    await pod.until(lambda: _in_flight(pod, room), what="a request running in every sandbox")
    queued = [asyncio.create_task(pod.invoke(name, {"n": 10 + n})) for n in range(3)]
    await pod.until(lambda: _queued(pod, 3), what="three requests queued")
    status, body = await pod.invoke(name, {"n": 99})
    assert status == 429 and body["Code"] == "TooManyRequestsException", body
    assert "queue" in body["Message"] + body.get("Cause", "")
    assert [r[0] for r in await asyncio.gather(*running)] == [200] * room
    assert [r[0] for r in await asyncio.gather(*queued)] == [200] * 3, "queued requests are served, not dropped"
    assert (await pod.resource())["Counters"]["queued"] >= 3


async def test_reserved_concurrency_queues_then_times_out(pod: LivePod) -> None:
    await pod.create("capped")
    first = asyncio.create_task(pod.invoke("capped", {"sleep": 6}))
    await pod.until(lambda: _in_flight(pod, 1), what="the first request running")
    started = time.monotonic()
    status, body = await pod.invoke("capped")
    waited = time.monotonic() - started
    assert status == 429 and "reserved concurrency of 1" in body.get("Cause", body["Message"]), body
    assert 3.5 <= waited < 6, f"a queued request waits --queue-timeout (4 s), not {waited:.1f}s"
    assert (await first)[0] == 200
    assert (await pod.invoke("capped"))[0] == 200


async def test_reserved_concurrency_of_the_function_record(pod: LivePod) -> None:
    name = unique("off")
    await pod.create(name, ReservedConcurrentExecutions=0)
    status, body = await pod.invoke(name)
    assert status == 429 and "reserved concurrency of 0" in body.get("Cause", ""), body
    assert not any(f":function:{name}:" in r["FunctionBrn"] for r in await pod.runtimes())


async def _held(pod: LivePod) -> int:
    """Sandboxes an earlier test's function keeps warm (scale.min)."""
    return sum(1 for r in await pod.runtimes() if r["FunctionBrn"])


async def _in_flight(pod: LivePod, n: int) -> bool:
    return sum(r["Concurrency"] for r in await pod.runtimes()) >= n


async def _queued(pod: LivePod, n: int) -> bool:
    return (await pod.resource())["Queue"]["Waiting"] >= n


# ---- what the APIs show --------------------------------------------------------------------------------

async def test_runtimes_resource_and_invalidate(pod: LivePod) -> None:
    name = unique("shown")
    await pod.create(name, MemorySize=256)
    held = await _held(pod)
    assert (await pod.invoke(name))[0] == 200
    slot = await pod.slot_of(name)
    assert {"State", "FunctionBrn", "Concurrency", "LastAccessTime", "StateSince", "LastLivenessTime",
            "ReservedMemory", "Epoch"} <= set(slot)
    assert slot["ReservedMemory"] == 256 << 20 and slot["LastLivenessTime"].endswith("Z")
    res = await pod.resource()
    assert res["Capacity"]["Memory"] >= res["Allocatable"]["Memory"] > 0
    assert res["Reserved"]["Memory"] == res["Used"]["Memory"] == (256 + 128 * held) << 20
    assert res["Sandboxes"]["Idle"] == 2
    async with pod.session().post(f"{pod.config.controller_url}/v1/runtimes/{slot['RuntimeID']}/invalidate") as r:
        assert r.status == 200

    async def rebuilt() -> bool:
        r = next(r for r in await pod.runtimes() if r["RuntimeID"] == slot["RuntimeID"])
        return r["State"] == "cold" and not r["Abnormal"] and r["Available"]

    await pod.until(rebuilt, what="the invalidated sandbox rebuilt")
    assert (await pod.resource())["Reserved"]["Memory"] == (128 * held) << 20


# ---- pre-started Node.js runtimes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def standby_pod() -> Iterator[LivePod]:
    yield from live_pod(container_num=4, funclet_args=("--standby-sandboxes", "2"),
                        controller_args=("--max-runtime-idle", "60s"))


async def test_nodejs_cold_start_takes_a_prestarted_runtime(standby_pod: LivePod) -> None:
    """Idle sandboxes keep node started; a Node.js cold start hands it the function, then one is refilled."""
    pod = standby_pod

    async def standing() -> dict[str, str]:
        return {r["RuntimeID"]: r["Standby"] for r in await pod.runtimes() if r["Standby"]}

    async def two_standing() -> bool:
        return len(await standing()) == 2

    await pod.until(two_standing, what="two idle sandboxes with node pre-started")
    before = await standing()
    assert set(before.values()) == {"nodejs"}, before
    infos = {c["ContainerID"]: c for c in await pod.containers()}
    assert all(infos[cid]["Standby"] == "nodejs" and infos[cid]["State"] == "cold" for cid in before)

    name = unique("nodeStandby")
    await pod.create(name, Runtime="nodejs20", Environment={"Variables": {"GREETING": "hi"}},
                     Code=b64zip({"index.js": "exports.handler = async (e) => "
                                              "({greeting: process.env.GREETING, e, pid: process.pid});\n"}))
    status, body = await pod.invoke(name, {"x": 1})
    assert status == 200 and body["greeting"] == "hi" and body["e"] == {"x": 1}, body
    mine = (await pod.slot_of(name))["RuntimeID"]
    assert mine in before, (mine, before)  # it landed on a sandbox whose node was already started

    async def refilled() -> bool:
        now = await standing()
        return len(now) == 2 and mine not in now

    await pod.until(refilled, what="another idle sandbox taking over the standby")
    now = await standing()

    # A Python function prefers a sandbox without a standby, so both pre-started nodes survive.
    py = unique("pyBesideStandby")
    await pod.create(py)
    status, body = await pod.invoke(py)
    assert status == 200, body
    assert (await pod.slot_of(py))["RuntimeID"] not in now
    assert await standing() == now
