"""The gateway inside a real pod's controller (``--gateway-port``): routes from the stubs trigger API,
events as AWS sends them through the real invoke path, AWS's response and error mapping, CORS,
precedence, function URLs, bad inputs, and ``python -m httptrigger`` as a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT, b64zip
from easyfaas.pod import Pod, PodConfig
from easyfaas.pod_leaks import kernel_leaks
from easyfaas.pod_names import PodNames, free_port
from tests.gateway_harness import MAX_BODY, add_trigger, deploy, gw_pod, http, until_routed  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent

ECHO = """\
import base64, json, os, time
def handler(event, context):
    path = event.get('rawPath') or event.get('path') or ''
    if path.endswith('/trace'):
        return {'statusCode': 200, 'body': os.environ.get('_X_AMZN_TRACE_ID', '')}
    if path.endswith('/fail'):
        raise ValueError('secret detail of the failure')
    if path.endswith('/slow'):
        time.sleep(5)
    bad = {'/bad-b64': {'statusCode': 200, 'body': '!!not base64', 'isBase64Encoded': True},
           '/bad-status': {'statusCode': 700, 'body': 'x'},
           '/bad-header': {'statusCode': 200, 'headers': {'X-Evil': 'a\\r\\nInjected: yes'}, 'body': 'leak'},
           '/plain': 'just a string'}
    for suffix, result in bad.items():
        if path.endswith(suffix):
            return result
    return {'statusCode': 200, 'headers': {'content-type': 'application/json'}, 'body': json.dumps(event)}
"""


@pytest.fixture(scope="module")
def echo_name() -> str:
    return f"echo{secrets.token_hex(3)}"


@pytest.fixture
async def echo(gw_pod: Pod, http: aiohttp.ClientSession, echo_name: str) -> str:
    """The echo function with its routes (created once per module)."""
    if not getattr(gw_pod, "echo_ready", False):
        await deploy(http, gw_pod, echo_name, "python3", b64zip({"index.py": ECHO}), timeout=2)
        tag = echo_name
        for cfg in ({"Methods": ["ANY"], "Path": f"/{tag}/v2/{{proxy+}}"},
                    {"Methods": ["POST", "GET"], "Path": f"/{tag}/v1/{{id}}", "PayloadFormatVersion": "1.0"},
                    {"Methods": ["GET"], "Path": f"/{tag}/p/{{id}}"},
                    {"Methods": ["GET"], "Path": f"/{tag}/p/me"},
                    {"Methods": ["ANY"], "Path": f"/{tag}/p/{{proxy+}}"},
                    {"Methods": ["GET"], "Path": f"/{tag}/cors/{{id}}",
                     "Cors": {"AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "PUT"],
                              "AllowHeaders": ["content-type", "x-token"], "MaxAge": 300,
                              "ExposeHeaders": ["x-total"]}}):
            await add_trigger(http, gw_pod, echo_name, cfg)
        await until_routed(http, f"{gw_pod.gateway_url}/{tag}/cors/1")  # type: ignore[attr-defined]
        gw_pod.echo_ready = True  # type: ignore[attr-defined]
    return echo_name


async def test_payload_v2_through_a_route(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    url = f"{gw_pod.gateway_url}/{echo}/v2/users/42?a=1&a=2&b=x%20y"  # type: ignore[attr-defined]
    async with http.post(url, data=b'{"k": 1}', headers={"Content-Type": "application/json", "Cookie": "s=1; t=2",
                                                         "X-Multi": "1", "User-Agent": "gw-test"}) as r:
        assert r.status == 200, await r.text()
        ev = await r.json()
    assert ev["version"] == "2.0" and ev["routeKey"] == f"ANY /{echo}/v2/{{proxy+}}"
    assert ev["rawPath"] == f"/{echo}/v2/users/42" and ev["rawQueryString"] == "a=1&a=2&b=x%20y"
    assert ev["pathParameters"] == {"proxy": "users/42"} and ev["queryStringParameters"] == {"a": "1,2", "b": "x y"}
    assert ev["cookies"] == ["s=1", "t=2"] and ev["headers"]["x-multi"] == "1" and "cookie" not in ev["headers"]
    assert ev["body"] == '{"k": 1}' and ev["isBase64Encoded"] is False
    rc = ev["requestContext"]
    assert rc["accountId"] == ACCOUNT and rc["http"]["method"] == "POST" and rc["http"]["sourceIp"] == "127.0.0.1"
    assert rc["http"]["userAgent"] == "gw-test" and rc["stage"] == "$default" and isinstance(rc["timeEpoch"], int)
    async with http.put(url, data=b"\x00\xff\x10", headers={"Content-Type": "application/octet-stream"}) as r:
        ev = await r.json()
    assert ev["isBase64Encoded"] is True and ev["body"] == "AP8Q"


async def test_payload_v1_through_a_route(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    url = f"{gw_pod.gateway_url}/{echo}/v1/7?a=1&a=2"  # type: ignore[attr-defined]
    async with http.get(url, headers={"X-Multi": "1"}) as r:
        assert r.status == 200, await r.text()
        ev = await r.json()
    assert ev["version"] == "1.0" and ev["resource"] == f"/{echo}/v1/{{id}}" and ev["httpMethod"] == "GET"
    assert ev["pathParameters"] == {"id": "7"} and ev["queryStringParameters"] == {"a": "2"}
    assert ev["multiValueQueryStringParameters"] == {"a": ["1", "2"]} and ev["multiValueHeaders"]["x-multi"] == ["1"]
    assert ev["requestContext"]["identity"]["sourceIp"] == "127.0.0.1" and ev["body"] is None


async def test_precedence(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    base = f"{gw_pod.gateway_url}/{echo}/p"  # type: ignore[attr-defined]
    for method, path, key in (("GET", "/me", f"GET /{echo}/p/me"), ("GET", "/9", f"GET /{echo}/p/{{id}}"),
                              ("POST", "/9", f"ANY /{echo}/p/{{proxy+}}"),
                              ("GET", "/9/deeper", f"ANY /{echo}/p/{{proxy+}}")):
        async with http.request(method, base + path) as r:
            assert (await r.json())["routeKey"] == key, (method, path)


async def test_function_urls(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    for path, raw in ((f"/{ACCOUNT}/{echo}/users/42", "/users/42"), (f"/{ACCOUNT}/{echo}", "/"),
                      (f"/{ACCOUNT}/{echo}/$LATEST/users/42", "/users/42")):
        async with http.get(f"{gw}{path}?x=1") as r:
            assert r.status == 200, await r.text()
            ev = await r.json()
        assert ev["rawPath"] == raw and ev["routeKey"] == "$default" and "pathParameters" not in ev
        assert ev["queryStringParameters"] == {"x": "1"}
    async with http.get(f"{gw}/{ACCOUNT}/{echo}/3/x") as r:  # version 3 does not exist
        assert r.status == 404 and await r.json() == {"message": "Not Found"}
    async with http.get(f"{gw}/{ACCOUNT}/nosuch{secrets.token_hex(2)}") as r:
        assert r.status == 404 and await r.json() == {"message": "Not Found"}


CALLER_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def traced_get(http: aiohttp.ClientSession, url: str, traceparent: str | None) -> tuple[str, str]:
    """(the function's _X_AMZN_TRACE_ID, the answer's traceparent) of GET ``url`` (a /trace path)."""
    async with http.get(url, headers={"traceparent": traceparent} if traceparent else {}) as r:
        assert r.status == 200, await r.text()
        return await r.text(), r.headers["traceparent"]


def assert_one_span(xray: str, traceparent: str, trace_id: str | None = None) -> None:
    """The function ran as the span the answer names, in ``trace_id``'s trace (any, when None)."""
    version, trace, span, flags = traceparent.split("-")
    assert version == "00" and (trace_id is None or trace == trace_id)
    assert xray == f"Root=1-{trace[:8]}-{trace[8:]};Parent={span};Sampled={int(flags == '01')}"


async def test_traceparent_through_the_gateway(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    caller_trace = CALLER_TRACE.split("-")[1]
    for url in (f"{gw}/{echo}/v2/trace", f"{gw}/{echo}/v1/trace", f"{gw}/{ACCOUNT}/{echo}/trace"):
        xray, back = await traced_get(http, url, CALLER_TRACE)
        assert_one_span(xray, back, caller_trace)
        assert back.split("-")[2] != CALLER_TRACE.split("-")[2], "the invocation is a span of its own"
        # Without one, the answer still names the trace the invocation started.
        xray, back = await traced_get(http, url, None)
        assert_one_span(xray, back)
        assert back.split("-")[1] != caller_trace and back.endswith("-00")


async def test_errors_as_each_product_answers_them(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    async with http.get(f"{gw}/{echo}/v2/fail") as r:  # a route: an HTTP API
        assert r.status == 500 and await r.json() == {"message": "Internal Server Error"}
    async with http.get(f"{gw}/{ACCOUNT}/{echo}/fail") as r:  # a function URL
        assert r.status == 502 and b"secret detail" not in await r.read()
    async with http.get(f"{gw}/{echo}/v2/slow") as r:
        assert r.status == 503 and await r.json() == {"message": "Service Unavailable"}
    async with http.get(f"{gw}/{echo}/nothing/here") as r:
        assert r.status == 404 and await r.json() == {"message": "Not Found"}
    async with http.get(f"{gw}/{echo}/v2/plain") as r:  # a string result: a JSON string, as Lambda sends it
        assert r.status == 200 and await r.read() == b'"just a string"'


@pytest.mark.parametrize("suffix", ["bad-b64", "bad-status", "bad-header"])
async def test_invalid_results_are_502_with_nothing_sent(gw_pod: Pod, http: aiohttp.ClientSession, echo: str,
                                                         suffix: str) -> None:
    async with http.get(f"{gw_pod.gateway_url}/{echo}/v2/{suffix}") as r:  # type: ignore[attr-defined]
        body = await r.read()
        assert r.status == 502 and json.loads(body) == {"message": "Internal Server Error"}
        assert "Injected" not in r.headers and "X-Evil" not in r.headers and b"leak" not in body


async def test_bad_inputs(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    async with http.post(f"{gw}/{echo}/v2/big", data=b"x" * (MAX_BODY + 1)) as r:
        assert r.status == 413
    port = int(gw.rsplit(":", 1)[1])
    for path in (f"/{echo}/p/../v2/x", f"/{echo}/v2/%2e%2e/x", f"/{echo}/p/a%00b", f"/{ACCOUNT}/{echo}/..",
                 f"/{echo}/p/%zz"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # raw: clients normalise paths
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 404 "), (path, answer[:200])
        assert answer.endswith(b'{"message":"Not Found"}')
    async with http.get(f"{gw}/{echo}/p/a%2Fb") as r:  # an encoded slash stays inside its segment
        assert (await r.json())["pathParameters"] == {"id": "a/b"}


async def test_cors_preflight(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    url = f"{gw_pod.gateway_url}/{echo}/cors/5"  # type: ignore[attr-defined]
    async with http.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
                                          "Access-Control-Request-Headers": "X-Token"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert r.headers["Access-Control-Allow-Methods"] == "GET,PUT"
        assert r.headers["Access-Control-Max-Age"] == "300"
    async with http.options(url, headers={"Origin": "https://evil.example",
                                          "Access-Control-Request-Method": "GET"}) as r:
        assert r.status == 204 and "Access-Control-Allow-Origin" not in r.headers
    async with http.get(url, headers={"Origin": "https://app.example"}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert r.headers["Access-Control-Expose-Headers"] == "x-total"


async def test_routes_follow_trigger_changes(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    t = await add_trigger(http, gw_pod, echo, {"Methods": ["GET"], "Path": f"/{echo}/live"})
    await until_routed(http, f"{gw}/{echo}/live")
    async with http.get(f"{gw}/{echo}/live") as r:
        assert (await r.json())["routeKey"] == f"GET /{echo}/live"
    await add_trigger(http, gw_pod, echo, {"Methods": ["GET"], "Path": f"/{echo}/live"}, status=409)
    async with http.delete(f"{gw_pod.config.stubs_url}/v1/functions/{echo}/triggers/{t['TriggerId']}",
                           headers={"X-easyfaas-Account-Id": ACCOUNT}) as r:
        assert r.status == 204
    await until_routed(http, f"{gw}/{echo}/live", gone=True)


async def test_route_of_a_deleted_function_is_404(gw_pod: Pod, http: aiohttp.ClientSession) -> None:
    name = f"gone{secrets.token_hex(3)}"
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    await deploy(http, gw_pod, name, "python3", b64zip({"index.py": ECHO}))
    await add_trigger(http, gw_pod, name, {"Methods": ["GET"], "Path": f"/{name}"})
    await until_routed(http, f"{gw}/{name}")
    async with http.delete(f"{gw_pod.config.stubs_url}/v1/functions/{name}",
                           headers={"X-easyfaas-Account-Id": ACCOUNT}) as r:
        assert r.status == 204
    await until_routed(http, f"{gw}/{name}", gone=True)
    async with http.get(f"{gw}/{name}") as r:
        assert r.status == 404 and await r.json() == {"message": "Not Found"}


async def test_standalone_httptrigger_process(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "httptrigger", "--port", str(port), "--controller-host",
                             gw_pod.config.controller_url, "--repository-endpoint", gw_pod.config.stubs_url],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/{echo}/v1/3"
        deadline = time.monotonic() + 20
        while True:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        ev = await r.json()
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "python -m httptrigger did not come up"
            await asyncio.sleep(0.2)
        assert ev["version"] == "1.0" and ev["pathParameters"] == {"id": "3"}
        xray, back = await traced_get(http, f"http://127.0.0.1:{port}/{echo}/v2/trace", CALLER_TRACE)
        assert_one_span(xray, back, CALLER_TRACE.split("-")[1])
        async with http.get(f"http://127.0.0.1:{port}/{echo}/v2/fail") as r:
            assert r.status == 500 and await r.json() == {"message": "Internal Server Error"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]


async def test_make_run_form_serves_the_gateway(root_required: None, http: aiohttp.ClientSession) -> None:
    """As ``make run`` starts a pod (all-in-one control plane; scripts/run-pod exports the port)."""
    names = PodNames.new()
    base = Path(tempfile.mkdtemp(prefix=f"efaas-gwrun-{names.tag}-"))
    port = free_port()
    config = PodConfig(state_dir=base / "state", run_dir=base / "run", controller_port=free_port(),
                       stubs_port=free_port(), container_num=1, pod_name=names.pod_name, bridge_name=names.bridge,
                       bridge_ip=names.bridge_ip, veth_prefix=names.veth_prefix, log_dir=base / "logs",
                       all_in_one=True)
    pod = Pod(config)
    old = os.environ.get("EASYFAAS_CONTROLLER_GATEWAY_PORT")
    os.environ["EASYFAAS_CONTROLLER_GATEWAY_PORT"] = str(port)  # what scripts/run-pod exports
    try:
        await asyncio.to_thread(pod.start)
        name = f"run{secrets.token_hex(3)}"
        await deploy(http, pod, name, "python3", b64zip({"index.py": ECHO}))
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        async with http.get(f"http://127.0.0.1:{port}/{ACCOUNT}/{name}/x") as r:
            assert r.status == 200 and (await r.json())["rawPath"] == "/x"
    finally:
        if old is None:
            os.environ.pop("EASYFAAS_CONTROLLER_GATEWAY_PORT", None)
        else:
            os.environ["EASYFAAS_CONTROLLER_GATEWAY_PORT"] = old
        codes = await asyncio.to_thread(pod.stop)
        leaks = kernel_leaks(config.state_dir, names)
        if not leaks:
            shutil.rmtree(base, ignore_errors=True)
    assert not leaks and all(code == 0 for code in codes.values()), (leaks, codes)


async def test_routes_survive_a_stubs_restart(gw_pod: Pod, http: aiohttp.ClientSession, echo: str) -> None:
    """Stubs reads its triggers back from disk; the gateway sees a new boot and reads them all again."""
    gw = gw_pod.gateway_url  # type: ignore[attr-defined]
    await asyncio.to_thread(gw_pod.restart, "stubs")
    t = await add_trigger(http, gw_pod, echo, {"Methods": ["GET"], "Path": f"/{echo}/after-restart"})
    await until_routed(http, f"{gw}/{echo}/after-restart")  # a change after the restart is followed
    async with http.get(f"{gw}/{echo}/p/me") as r:  # and the routes from before are still there
        assert (await r.json())["routeKey"] == f"GET /{echo}/p/me"
    async with http.delete(f"{gw_pod.config.stubs_url}/v1/functions/{echo}/triggers/{t['TriggerId']}",
                           headers={"X-easyfaas-Account-Id": ACCOUNT}) as r:
        assert r.status == 204
