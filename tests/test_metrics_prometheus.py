"""The real pod observed as an operator would: a real Prometheus server scrapes it on loopback, the
test asks Prometheus's HTTP API for the rate of invocations and the cold-start histogram;
``promtool check metrics`` accepts the controller's, the registry's and the funclet's expositions
(the funclet's read over its unix socket); /readyz of each says it can serve; a traceparent reaches
a real Python function as ``_X_AMZN_TRACE_ID`` and its kept log lines.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT, b64zip, brn
from easyfaas.pod_names import free_port
from tests.metrics_harness import promtool_accepts, value

pytestmark = pytest.mark.e2e

PROMETHEUS = shutil.which("prometheus")
H = {"X-easyfaas-Account-Id": ACCOUNT}
PY_TRACED = (
    "import os\n"
    "def handler(event, context):\n"
    "    trace = os.environ.get('_X_AMZN_TRACE_ID', '')\n"
    "    print('trace is', trace)\n"
    "    return {'trace': trace}\n"
)


@pytest.fixture(scope="module")
def prometheus(pod: Any) -> Iterator[str]:  # noqa: ANN401 - the session's Pod
    """A Prometheus server scraping the pod's controller and registry every second; its base URL."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    base = Path(tempfile.mkdtemp(prefix="ef-prom-"))
    c = pod.config
    config = base / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "controller", "static_configs": [{"targets": [f"127.0.0.1:{c.controller_port}"]}]},
            {"job_name": "stubs", "static_configs": [{"targets": [f"127.0.0.1:{c.stubs_port}"]}]},
        ],
    }))
    port = free_port()
    log = open(base / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def http(pod: Any) -> AsyncIterator[aiohttp.ClientSession]:  # noqa: ANN401
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def create_traced(http: aiohttp.ClientSession, pod: Any) -> str:  # noqa: ANN401
    name = f"obs{secrets.token_hex(3)}"
    body = {"Runtime": "python3", "Handler": "index.handler", "Timeout": 5, "MemorySize": 128,
            "Code": b64zip({"index.py": PY_TRACED})}
    async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}", headers=H, data=json.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()
    return name


async def invoke(http: aiohttp.ClientSession, pod: Any, name: str,  # noqa: ANN401
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with http.post(f"{pod.config.controller_url}/v1/functions/{brn(name, '$LATEST')}/invocations",
                         headers={**H, **(headers or {})}, data=b"{}") as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def query(http: aiohttp.ClientSession, prometheus: str, promql: str) -> list[dict[str, Any]]:
    async with http.get(f"{prometheus}/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]["result"]


async def eventually(http: aiohttp.ClientSession, prometheus: str, promql: str, ok: Any,  # noqa: ANN401
                     timeout: float = 60) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    result: list[dict[str, Any]] = []
    while asyncio.get_running_loop().time() < deadline:
        try:
            result = await query(http, prometheus, promql)
        except aiohttp.ClientError:
            result = []  # Prometheus still starting
        if result and ok(float(result[0]["value"][1])):
            return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"{promql} never satisfied the check; last answer {result}")


async def test_prometheus_scrapes_the_pod(pod: Any, prometheus: str,  # noqa: ANN401
                                      http: aiohttp.ClientSession) -> None:
    name = await create_traced(http, pod)
    # Prometheus scrapes the controller before the invocations begin (it starts slowly on a loaded
    # host), and they go on across several scrapes until Prometheus sees a rate.
    await eventually(http, prometheus, 'up{job="controller"}', lambda v: v == 1)
    count = 0
    stop = asyncio.Event()

    async def keep_invoking() -> None:
        nonlocal count
        while not stop.is_set():
            status, _, body = await invoke(http, pod, name)
            assert status == 200, body
            count += 1
            await asyncio.sleep(0.05)

    invoking = asyncio.create_task(keep_invoking())
    try:
        await eventually(http, prometheus,
                         f'sum(rate(faas_invocations_total{{function="{name}",result="success"}}[30s]))',
                         lambda v: v > 0)
    finally:
        stop.set()  # not a cancel: the call under way finishes and is counted
        await invoking
    assert count > 0
    await eventually(http, prometheus, f'sum(faas_invocations_total{{function="{name}",result="success"}})',
                     lambda v: v == count)
    await eventually(http, prometheus, f'sum(faas_init_duration_seconds_count{{function="{name}"}})',
                     lambda v: v == 1)
    await eventually(http, prometheus, f'sum(faas_coldstarts_total{{function="{name}"}})', lambda v: v == 1)
    buckets = await query(http, prometheus, f'faas_init_duration_seconds_bucket{{function="{name}"}}')
    assert {b["metric"]["le"] for b in buckets} >= {"0.005", "0.1", "1.0", "10.0", "+Inf"}
    quantile = await eventually(http, prometheus,
                                f'histogram_quantile(0.5, sum by (le) (faas_init_duration_seconds_bucket'
                                f'{{function="{name}"}}))', lambda v: v > 0)
    assert float(quantile[0]["value"][1]) <= 10
    up = await query(http, prometheus, "up")
    assert {r["metric"]["job"]: r["value"][1] for r in up} == {"controller": "1", "stubs": "1"}


async def test_every_daemon_exposition_passes_promtool_and_is_ready(pod: Any,  # noqa: ANN401
                                                                   http: aiohttp.ClientSession) -> None:
    c = pod.config
    name = await create_traced(http, pod)
    assert (await invoke(http, pod, name))[0] == 200
    for base in (c.controller_url, c.stubs_url):
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            promtool_accepts(await resp.text())
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(c.funclet_sock))) as funclet:
        async with funclet.get("http://funclet/metrics") as resp:
            text = await resp.text()
            promtool_accepts(text)
            assert value(text, "easyfaas_funclet_sandboxes") > 0
            assert value(text, "easyfaas_code_images_built_total") >= 1
        async with funclet.get("http://funclet/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["built"] > 0


async def test_traceparent_reaches_the_function_and_its_logs(pod: Any,  # noqa: ANN401
                                                            http: aiohttp.ClientSession) -> None:
    name = await create_traced(http, pod)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    status, headers, body = await invoke(http, pod, name, {"traceparent": parent,
                                                           "X-easyfaas-Request-Id": "trace-e2e-1"})
    assert status == 200, body
    back = headers["traceparent"]
    assert back.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and back.endswith("-01")
    span = back.split("-")[2]
    xray = f"Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent={span};Sampled=1"
    assert json.loads(body)["trace"] == xray
    lines: list[dict[str, Any]] = []
    for _ in range(100):
        async with http.get(f"{pod.config.controller_url}/v1/functions/{name}/logs", headers=H,
                            params={"request_id": "trace-e2e-1"}) as resp:
            assert resp.status == 200
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
        if any(line["message"].startswith("REPORT") for line in lines):
            break
        await asyncio.sleep(0.1)
    messages = [line["message"] for line in lines]
    assert f"trace is {xray}" in messages
    assert messages[0] == "START RequestId: trace-e2e-1 Version: $LATEST"
    assert any(m.startswith("REPORT RequestId: trace-e2e-1\tDuration: ") and "Init Duration: " in m for m in messages)
    assert {line["trace_id"] for line in lines} == {xray}
