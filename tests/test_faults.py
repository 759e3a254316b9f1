"""Faults, with real daemons and sandboxes: ``kill -9`` of a runtime, a runner, the funclet and the
controller, each under load; a full disk in the data directory; a stubs outage while functions are
cached; and SIGTERM of the controller under load.

In each case only what was in flight fails (with an error that says what happened), the pod
recovers by itself (its supervisor restarts a killed daemon), no kernel object is left behind, and
every stored function is still there and still runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from typing import Any, Iterator

import aiohttp
import psutil
import pytest

from easyfaas.pod import _tcp_http_ok
from tests.pod_harness import NODE_FN, Load, LivePod, live_pod, settled, stored_functions, unique, wait_healthy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fp() -> Iterator[LivePod]:
    for lp in live_pod(container_num=3, funclet_args=("--max-sandboxes", "4"),
                       controller_args=("--max-runtime-idle", "2s", "--queue-timeout", "2s",
                                        "--max-sandbox-idle", "1s", "--registry-timeout", "3s")):
        lp.pod.supervise(poll=0.1)
        yield lp


@pytest.fixture
async def pod(fp: LivePod) -> Any:
    try:
        yield fp
    finally:
        await fp.close_clients()


async def make_functions(lp: LivePod) -> list[str]:
    names = [unique("fa"), unique("fb"), unique("fnode")]
    await lp.create(names[0])
    await lp.create(names[1], PodConcurrentQuota=4)
    await lp.create(names[2], Runtime="nodejs", Handler="index.handler", Code=_b64({"index.js": NODE_FN}))
    for name in names:
        status, body = await lp.invoke(name)
        assert status == 200, body
    return names


def _b64(files: dict[str, str]) -> str:
    from easyfaas.function_code import b64zip

    return b64zip(files)


async def works_again(lp: LivePod, names: list[str]) -> None:
    for name in names:
        async def ok(name: str = name) -> bool:
            status, _ = await lp.invoke(name)
            return status == 200

        await lp.until(ok, timeout=30, what=f"{name} invocable again")


# ---- kill -9 of each part under load -----------------------------------------------------------

async def test_kill_9_of_runtimes_and_runners_under_load(pod: LivePod) -> None:
    names = await make_functions(pod)
    stored = await stored_functions(pod)
    load = Load(pod, names)
    load.start()
    try:
        for round_ in range(4):
            await asyncio.sleep(0.7)
            warm = [r for r in await pod.runtimes() if r["State"] == "warm"]
            if not warm:
                continue
            victim = random.choice(warm)
            status, info = await pod.funclet.request_json("GET", f"/v1/funclet/container/{victim['RuntimeID']}")
            if status != 200 or not info["HostPid"]:
                continue
            runner = psutil.Process(info["HostPid"])
            target = runner if round_ % 2 else (runner.children() or [runner])[0]
            try:
                target.kill()
            except psutil.NoSuchProcess:
                pass
    finally:
        outcomes = await load.stop()
    assert not load.unexplained, load.unexplained
    assert outcomes["200"] > 0 and not any(k.startswith("connection") for k in outcomes), outcomes
    failures = {k for k in outcomes if k != "200"}
    assert failures <= {"500 Runtime.ExitError", "500 Runtime.OutOfMemory", "500 Sandbox.Failed", "500 ServiceException",
                        "429 TooManyRequestsException"}, outcomes
    await pod.until(lambda: settled(pod), what="the pool settled")
    await works_again(pod, names)
    assert await stored_functions(pod) == stored


async def test_kill_9_of_the_controller_under_load(pod: LivePod) -> None:
    names = await make_functions(pod)
    load = Load(pod, names)
    load.start()
    await asyncio.sleep(1)
    old = pod.pod.pid("controller")
    pod.pod.kill("controller", signal.SIGKILL)
    await wait_healthy(pod, "controller", old)
    await asyncio.sleep(1)
    outcomes = await load.stop()
    assert outcomes["200"] > 0, outcomes
    assert not load.unexplained, load.unexplained
    # The new controller adopted the funclet's sandboxes: same set, nothing left warm from before.
    await pod.until(lambda: settled(pod), what="the new controller adopted every sandbox")
    await works_again(pod, names)
    assert len(await pod.containers()) <= 4


async def test_kill_9_of_the_funclet_under_load(pod: LivePod) -> None:
    names = await make_functions(pod)
    stored = await stored_functions(pod)
    old_zygotes = set(pod.zygotes)
    load = Load(pod, names)
    load.start()
    await asyncio.sleep(1)
    old = pod.pod.pid("funclet")
    pod.pod.kill("funclet", signal.SIGKILL)
    await wait_healthy(pod, "funclet", old)
    pod.note_zygote()
    await asyncio.sleep(1.5)
    outcomes = await load.stop()
    assert outcomes["200"] > 0 and not load.unexplained, (outcomes, load.unexplained)
    assert not any(k.startswith("connection") for k in outcomes), "the controller answered every request"
    await pod.until(lambda: settled(pod), what="the controller follows the new funclet")
    await works_again(pod, names)
    # What the dead funclet built is gone: its zygote and sandboxes, and no cgroup, veth or mount
    # beyond what the new one holds.
    assert not any(psutil.pid_exists(pid) for pid in old_zygotes - pod.zygotes)
    sandboxes = len(await pod.containers())
    assert sandboxes <= 4
    veths = [l for l in os.listdir("/sys/class/net") if l.startswith(pod.names.veth_prefix)]
    assert len(veths) == sandboxes, veths
    cg_dir = _cgroup_dir(pod)
    assert cg_dir is not None
    groups = [d for d in os.listdir(cg_dir) if os.path.isdir(os.path.join(cg_dir, d))]
    assert len(groups) == sandboxes, groups
    assert await stored_functions(pod) == stored


def _cgroup_dir(lp: LivePod) -> str | None:
    for root, dirs, _ in os.walk("/sys/fs/cgroup/memory"):
        if f"easyfaas-{lp.names.pod_name}" in dirs:
            return os.path.join(root, f"easyfaas-{lp.names.pod_name}")
    return None


async def test_stubs_outage_while_functions_are_cached(pod: LivePod) -> None:
    name = unique("cached")
    await pod.create(name, Version="1")
    latest = unique("latest")
    await pod.create(latest)
    for ref, params in ((name, {"Qualifier": "1"}), (latest, {})):
        status, body = await pod.invoke(ref, **params)
        assert status == 200, body
    stored = await stored_functions(pod)
    old = pod.pod.pid("stubs")
    pod.pod.kill("stubs", signal.SIGSTOP)  # hung, not gone: the worst kind of outage
    try:
        status, body = await pod.invoke(name, Qualifier="1")
        assert status == 200, "a numeric version is cached: the outage does not touch it"
        started = time.monotonic()
        status, body = await asyncio.wait_for(pod.invoke(latest), 30)
        assert status == 500 and body["Code"] == "ServiceException", body
        assert "registry" in body.get("Cause", ""), body
        assert time.monotonic() - started < 10, "the registry timeout bounds the wait"
    finally:
        pod.pod.kill("stubs", signal.SIGCONT)
    pod.pod.kill("stubs", signal.SIGKILL)
    await wait_healthy(pod, "stubs", old)
    status, body = await pod.invoke(latest)
    assert status == 200, body
    assert await stored_functions(pod) == stored


# ---- SIGTERM drains -----------------------------------------------------------------------------

@pytest.fixture
async def sp() -> Any:
    for lp in live_pod(container_num=3, controller_args=("--queue-timeout", "5s", "--drain-timeout", "10s")):
        try:
            yield lp
        finally:
            await lp.close_clients()


async def test_sigterm_drains_in_flight_and_queued_requests(sp: LivePod) -> None:
    name = unique("drain")
    await sp.create(name, PodConcurrentQuota=0)
    calls = [asyncio.create_task(sp.invoke(name, {"sleep": 1.5, "n": n})) for n in range(4)]
    await sp.until(lambda: _busy(sp, 3), what="three running, one queued")
    started = time.monotonic()
    code = await asyncio.to_thread(sp.pod.stop_daemon, "controller")
    results = await asyncio.gather(*calls)
    assert [r[0] for r in results] == [200] * 4, results
    assert code == 0
    assert time.monotonic() - started < 10
    assert not _tcp_http_ok(sp.config.host, sp.config.controller_port, "/healthz")


async def _busy(lp: LivePod, running: int) -> bool:
    res = await lp.resource()
    return sum(r["Concurrency"] for r in await lp.runtimes()) >= running and res["Queue"]["Waiting"] >= 1


@pytest.fixture
async def quick_drain_pod() -> Any:
    for lp in live_pod(container_num=2, controller_args=("--drain-timeout", "1s")):
        try:
            yield lp
        finally:
            await lp.close_clients()


async def test_drain_deadline_cuts_off_what_is_too_slow(quick_drain_pod: LivePod) -> None:
    lp = quick_drain_pod
    name = unique("slowdrain")
    await lp.create(name)
    call = asyncio.create_task(lp.invoke(name, {"sleep": 20}))
    await lp.until(lambda: _in_flight(lp), what="the slow request running")
    started = time.monotonic()
    await asyncio.to_thread(lp.pod.stop_daemon, "controller")
    assert time.monotonic() - started < 8, "the controller stopped at its drain deadline"
    with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
        await asyncio.wait_for(call, 10)


async def _in_flight(lp: LivePod) -> bool:
    return any(r["Concurrency"] for r in await lp.runtimes())


# ---- a full disk ----------------------------------------------------------------------------------

class TmpfsPod(LivePod):
    """A pod whose whole data directory is a small tmpfs, so the test can fill it."""

    SIZE = "160m"

    def start(self) -> None:
        state = self.config.state_dir
        state.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.SIZE}", "efpool-full", str(state)], check=True)
        try:
            super().start()
        except BaseException:
            self.pod.stop()
            subprocess.run(["umount", "-l", str(state)], check=False)
            raise

    def stop(self) -> dict[str, int | None]:
        codes = super().stop()
        subprocess.run(["umount", "-l", str(self.config.state_dir)], check=False)
        return codes


@pytest.fixture
async def full_disk_pod() -> Any:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    # Without code prefetch the images are built at warmup, so the full disk meets a cold start.
    lp = TmpfsPod(container_num=2, controller_args=("--prefetch-code", "false"))
    lp.start()
    try:
        yield lp
    finally:
        await lp.close_clients()
        codes = lp.stop()
        leaks = lp.wait_no_leaks()
        logs = lp.log_tail()
        lp.cleanup()
        assert not leaks, f"the pod left kernel objects behind: {leaks}\n{logs}"
        assert all(code == 0 for code in codes.values()), f"daemons exited uncleanly: {codes}\n{logs}"


async def test_full_data_disk(full_disk_pod: LivePod) -> None:
    lp = full_disk_pod
    running, idle = unique("running"), unique("idle")
    await lp.create(running)
    await lp.create(idle, Code=_b64({"index.py": "def handler(e, c):\n    return 'idle ' + 'x' * 100000\n"}))
    assert (await lp.invoke(running))[0] == 200
    stored = await stored_functions(lp)
    filler = lp.config.state_dir / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    try:
        # Writing a new function fails and leaves nothing half-written behind.
        async with lp.session().post(f"{lp.config.stubs_url}/v1/functions/{unique('new')}",
                                     headers={"X-easyfaas-Account-Id": "df391b08c64c426a81645468c75163a5"},
                                     data=json.dumps({"Runtime": "python3", "Handler": "index.handler",
                                                      "Code": _b64({"index.py": "x = 1\n" * 50000})})) as r:
            body = await r.json()
            assert r.status >= 500 and body["Code"] == "ServiceException", body
            assert "No space left on device" in body["Cause"], body
        assert await stored_functions(lp) == stored
        # A warm function goes on working.
        assert (await lp.invoke(running))[0] == 200
        # A function whose code image cannot be built fails with the reason, and the pool heals.
        status, body = await lp.invoke(idle)
        assert status == 500 and "no space left on device" in json.dumps(body).lower(), body
        await lp.until(lambda: _all_cold_or_warm(lp), what="the pool healed after the failed warmup")
    finally:
        filler.unlink()
    status, body = await lp.invoke(idle)
    assert status == 200 and body.startswith("idle"), body
    assert await stored_functions(lp) == stored


async def _all_cold_or_warm(lp: LivePod) -> bool:
    return all(r["State"] in ("cold", "warm") and r["Available"] for r in await lp.runtimes())
