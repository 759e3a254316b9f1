"""A real pod with the gateway in its controller (``--gateway-port``), for the gateway tests
(tests/test_gateway_*.py): the pod (``gw_pod``, one per module) and an HTTP session without cookies
(``http``) as fixtures the test modules import, and deploying a function, adding an HTTP trigger
and waiting until the gateway routes it."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT
from easyfaas.pod import Pod, PodConfig
from easyfaas.pod_leaks import kernel_leaks
from easyfaas.pod_names import PodNames, free_port

MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def gw_pod(root_required: None) -> Iterator[Pod]:
    names = PodNames.new()
    base = Path(tempfile.mkdtemp(prefix=f"efaas-gw-{names.tag}-"))
    config = PodConfig(state_dir=base / "state", run_dir=base / "run", controller_port=free_port(),
                       stubs_port=free_port(), container_num=4, pod_name=names.pod_name, bridge_name=names.bridge,
                       bridge_ip=names.bridge_ip, veth_prefix=names.veth_prefix, log_dir=base / "logs",
                       controller_args=["--gateway-port", str(free_port()), "--max-body-size", str(MAX_BODY),
                                        "--max-runtime-idle", "60"])
    pod = Pod(config)
    pod.start()
    pod.gateway_url = f"http://127.0.0.1:{config.controller_args[1]}"  # type: ignore[attr-defined]
    try:
        yield pod
    finally:
        codes = pod.stop()
        leaks = kernel_leaks(config.state_dir, names)
        logs = {name: pod.log_tail(name, 15) for name in ("funclet", "controller", "stubs")}
        if not leaks:
            shutil.rmtree(base, ignore_errors=True)
        assert not leaks, f"the pod left kernel objects behind: {leaks}\nlogs: {logs}"
        assert all(code == 0 for code in codes.values()), f"daemons exited uncleanly: {codes}\nlogs: {logs}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def deploy(http: aiohttp.ClientSession, pod: Pod, name: str, runtime: str, code_b64: str,
                 timeout: int = 30) -> None:
    async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}", headers={"X-easyfaas-Account-Id": ACCOUNT},
                         data=json.dumps({"Runtime": runtime, "Handler": "index.handler", "Code": code_b64,
                                          "Timeout": timeout, "MemorySize": 256})) as r:
        assert r.status == 200, await r.text()


async def add_trigger(http: aiohttp.ClientSession, pod: Pod, name: str, config: dict[str, Any],
                      status: int = 201) -> dict[str, Any]:
    async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}/triggers",
                         headers={"X-easyfaas-Account-Id": ACCOUNT},
                         data=json.dumps({"Type": "http", "Config": config})) as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def until_routed(http: aiohttp.ClientSession, url: str, *, method: str = "GET", gone: bool = False) -> None:
    """Wait until the gateway serves (or stops serving) ``url``: it follows the trigger feed."""
    deadline = time.monotonic() + 10
    while True:
        async with http.request(method, url) as r:
            routed = r.status != 404 or (await r.read()) != b'{"message":"Not Found"}'
        if routed != gone or time.monotonic() > deadline:
            assert routed != gone, f"{url}: the gateway did not follow the trigger change"
            return
        await asyncio.sleep(0.1)
