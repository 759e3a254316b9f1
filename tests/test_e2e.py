"""End to end: the real pod, real sandboxes, real Python, Node.js and exec functions over HTTP.

Every test goes through the public contract only (stubs on one port, controller on another), the
way a user's curl commands do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT, b64zip, brn
from tests.pod_harness import E2E_SANDBOXES, OTHER_ACCOUNT

pytestmark = pytest.mark.e2e

NODE_HELLO = "exports.handler = (event, context, callback) => { callback(null, 'Hello world!'); };\n"
PY_ECHO = (
    "import os, time\n"
    "TOKEN = os.urandom(8).hex()\n"
    "def handler(event, context):\n"
    "    print('got', event)\n"
    "    if isinstance(event, dict) and event.get('sleep'):\n"
    "        time.sleep(event['sleep'])\n"
    "    return {'event': event, 'token': TOKEN, 'pid': os.getpid(), 'uid': os.getuid(),\n"
    "            'request_id': context.aws_request_id, 'function': context.function_name,\n"
    "            'memory': context.memory_limit_in_mb, 'remaining': context.get_remaining_time_in_millis()}\n"
)


def unique(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


@pytest.fixture
async def http(pod):  # noqa: ANN001 - pytest fixture
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        session.pod = pod  # type: ignore[attr-defined]
        yield session


async def create(http: aiohttp.ClientSession, name: str, body: dict, account: str = ACCOUNT) -> dict:
    async with http.post(f"{http.pod.config.stubs_url}/v1/functions/{name}",  # type: ignore[attr-defined]
                         headers={"X-easyfaas-Account-Id": account}, data=json.dumps(body)) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        return json.loads(text)


async def invoke(http: aiohttp.ClientSession, ref: str, payload: object | bytes = b"{}", *, account: str = ACCOUNT,
                 params: dict | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    hdrs = {"X-easyfaas-Account-Id": account, **(headers or {})}
    async with http.post(f"{http.pod.config.controller_url}/v1/functions/{ref}/invocations",  # type: ignore[attr-defined]
                         headers=hdrs, data=data, params=params) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def slots(http: aiohttp.ClientSession) -> list[dict]:
    async with http.get(f"{http.pod.config.controller_url}/v1/runtimes") as resp:  # type: ignore[attr-defined]
        assert resp.status == 200
        return await resp.json()


async def test_docs_flow_nodejs(http: aiohttp.ClientSession) -> None:
    name = unique("testHelloWorld")
    await create(http, name, {"Version": "1", "Runtime": "nodejs10", "Timeout": 5, "MemorySize": 128,
                              "Handler": "index.handler", "PodConcurrentQuota": 10,
                              "Code": b64zip({"index.js": NODE_HELLO})})
    status, headers, body = await invoke(http, brn(name, "1"))
    assert (status, body) == (200, b"Hello world!"), body
    assert headers.get("X-easyfaas-Request-Id") or headers.get("X-Easyfaas-Request-Id")
    for params in ({"Qualifier": "1"}, {"Qualifier": "$LATEST"}):
        status, _, body = await invoke(http, name, params=params)
        assert (status, body) == (200, b"Hello world!"), (params, body)
    status, _, body = await invoke(http, brn(name, "$LATEST"))
    assert (status, body) == (200, b"Hello world!")


async def test_python_function_runs_sandboxed_and_reuses_warm_sandbox(http: aiohttp.ClientSession) -> None:
    name = unique("py")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler", "Timeout": 5, "MemorySize": 256,
                              "Code": b64zip({"index.py": PY_ECHO})})
    status, headers, body = await invoke(http, brn(name, "$LATEST"), {"hello": "world"})
    assert status == 200, body
    first = json.loads(body)
    assert first["event"] == {"hello": "world"}
    assert first["uid"] != 0 and first["pid"] != 1
    assert first["function"] == name and first["memory"] == 256
    assert 0 < first["remaining"] <= 5000
    assert headers["Content-Type"].startswith("application/json")
    status, _, body = await invoke(http, brn(name, "$LATEST"), {"n": 2})
    second = json.loads(body)
    assert second["token"] == first["token"], "the second call must hit the same warm runtime"
    assert second["request_id"] != first["request_id"]


async def test_exec_function(http: aiohttp.ClientSession) -> None:
    name = unique("sh")
    script = "#!/bin/sh\nread line\necho \"you said: $line\"\necho to-stderr >&2\n"
    await create(http, name, {"Runtime": "exec", "Handler": "bin/run.sh", "Timeout": 5,
                              "Code": b64zip({"bin/run.sh": script}, executable=("bin/run.sh",))})
    status, headers, body = await invoke(http, name, {"x": 1}, headers={"Log-Type": "Tail"})
    assert status == 200, body
    assert body.decode().strip() == 'you said: {"x": 1}'
    log = base64.b64decode(headers["X-Bce-Log-Result"]).decode()
    assert "to-stderr" in log


async def test_two_functions_never_share_a_sandbox(http: aiohttp.ClientSession) -> None:
    a, b = unique("fa"), unique("fb")
    for n in (a, b):
        await create(http, n, {"Runtime": "python3", "Handler": "index.handler",
                               "Code": b64zip({"index.py": PY_ECHO})})
    ra = json.loads((await invoke(http, a, {}))[2])
    rb = json.loads((await invoke(http, b, {}))[2])
    assert ra["token"] != rb["token"]
    by_fn = {s.get("FunctionBrn", ""): s["RuntimeID"] for s in await slots(http) if s.get("State") == "warm"}
    slot_a = [sid for fn, sid in by_fn.items() if f":{a}:" in fn]
    slot_b = [sid for fn, sid in by_fn.items() if f":{b}:" in fn]
    assert slot_a and slot_b and set(slot_a).isdisjoint(slot_b)


async def test_new_version_gets_new_sandbox(http: aiohttp.ClientSession) -> None:
    name = unique("ver")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler",
                              "Code": b64zip({"index.py": "def handler(e, c):\n    return 'v1'\n"})})
    assert (await invoke(http, name))[2] == b"v1"
    async with http.put(f"{http.pod.config.stubs_url}/v1/functions/{name}",  # type: ignore[attr-defined]
                        headers={"X-easyfaas-Account-Id": ACCOUNT},
                        data=json.dumps({"Code": b64zip({"index.py": "def handler(e, c):\n    return 'v2'\n"})})) as r:
        assert r.status == 200, await r.text()
        published = (await r.json())["Configuration"]["Version"]
    assert (await invoke(http, name))[2] == b"v2"
    assert (await invoke(http, name, params={"Qualifier": published}))[2] == b"v2"


async def test_handler_exception_and_import_error(http: aiohttp.ClientSession) -> None:
    name = unique("boom")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler",
                              "Code": b64zip({"index.py": "def handler(e, c):\n    raise KeyError('nope')\n"})})
    status, headers, body = await invoke(http, name)
    assert status == 500
    assert headers.get("X-easyfaas-Function-Error") == "Unhandled"
    err = json.loads(body)
    assert err["errorType"] == "KeyError" and "nope" in err["errorMessage"] and err["stackTrace"]

    bad = unique("noimport")
    await create(http, bad, {"Runtime": "python3", "Handler": "index.handler",
                             "Code": b64zip({"index.py": "import not_a_module_anywhere\n"})})
    status, headers, body = await invoke(http, bad)
    assert status == 500 and headers.get("X-easyfaas-Function-Error") == "Unhandled"
    err = json.loads(body)
    assert err["errorType"] == "Runtime.ImportModuleError"
    assert "not_a_module_anywhere" in err["errorMessage"]
    # the broken sandbox is recycled, not kept warm for the next call
    for _ in range(50):
        if not any(f":{bad}:" in s.get("FunctionBrn", "") for s in await slots(http)):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the sandbox of a function that cannot be imported was kept")


async def test_timeout_kills_and_recycles(http: aiohttp.ClientSession) -> None:
    name = unique("slow")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler", "Timeout": 1,
                              "Code": b64zip({"index.py": PY_ECHO})})
    status, headers, body = await invoke(http, name, {"sleep": 30})
    assert status == 500 and headers.get("X-easyfaas-Function-Error") == "Unhandled"
    assert "Task timed out after 1" in json.loads(body)["errorMessage"]
    status, _, body = await invoke(http, name, {"fast": True})
    assert status == 200, body


async def test_log_tail(http: aiohttp.ClientSession) -> None:
    name = unique("logs")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler",
                              "Code": b64zip({"index.py": PY_ECHO})})
    status, headers, _ = await invoke(http, name, {"marker": "xyzzy"}, headers={"Log-Type": "Tail"})
    assert status == 200
    log = base64.b64decode(headers["X-Bce-Log-Result"]).decode()
    assert "xyzzy" in log and "START RequestID" in log


async def test_concurrency_quota_and_429(http: aiohttp.ClientSession) -> None:
    name = unique("busy")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler", "Timeout": 10,
                              "PodConcurrentQuota": 0, "Code": b64zip({"index.py": PY_ECHO})})
    results = await asyncio.gather(*(invoke(http, name, {"sleep": 1.5}) for _ in range(E2E_SANDBOXES + 3)))
    statuses = sorted(r[0] for r in results)
    assert 429 in statuses, statuses
    assert statuses.count(200) >= 1
    throttled = next(r for r in results if r[0] == 429)
    assert json.loads(throttled[2])["Code"] == "TooManyRequestsException"
    tokens = {json.loads(r[2])["token"] for r in results if r[0] == 200}
    assert len(tokens) == statuses.count(200), "quota 0 means one request at a time per sandbox"


@pytest.mark.parametrize("ref,params,code,status", [
    ("nosuchfunction", {"Qualifier": "$LATEST"}, "ResourceNotFoundException", 404),
    ("brn:cloud:faas:bj:zz:function", None, "InvalidParameterValueException", 400),
    ("somefn", {"Qualifier": "not a version!"}, "InvalidParameterValueException", 400),
])
async def test_bad_references(http: aiohttp.ClientSession, ref: str, params: dict | None, code: str,
                              status: int) -> None:
    got, _, body = await invoke(http, ref, params=params)
    err = json.loads(body)
    assert (got, err["Code"], err["Status"]) == (status, code, status)
    assert set(err) >= {"Code", "Message", "Status", "Type"}


async def test_bad_bodies_and_wrong_account(http: aiohttp.ClientSession) -> None:
    name = unique("guard")
    await create(http, name, {"Runtime": "python3", "Handler": "index.handler",
                              "Code": b64zip({"index.py": PY_ECHO})})
    status, _, body = await invoke(http, brn(name, "$LATEST"), account=OTHER_ACCOUNT)
    assert status == 403, body
    status, _, body = await invoke(http, name, b"{not json")
    assert (status, json.loads(body)["Code"]) == (400, "InvalidRequestContentException")
    big = b'{"x": "' + b"a" * (6 * 1024 * 1024 + 10) + b'"}'
    status, _, body = await invoke(http, name, big)
    assert status == 413, body[:200]


async def test_corrupt_zip_is_rejected_at_create(http: aiohttp.ClientSession) -> None:
    async with http.post(f"{http.pod.config.stubs_url}/v1/functions/{unique('zip')}",  # type: ignore[attr-defined]
                         headers={"X-easyfaas-Account-Id": ACCOUNT},
                         data=json.dumps({"Runtime": "python3", "Handler": "index.handler",
                                          "Code": base64.b64encode(b"PK\x03\x04 this is not a zip").decode()})) as r:
        assert r.status == 400
        assert (await r.json())["Code"] == "InvalidParameterValueException"


async def test_healthz_and_resource(http: aiohttp.ClientSession) -> None:
    base = http.pod.config.controller_url  # type: ignore[attr-defined]
    async with http.get(f"{base}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{base}/v1/resource") as r:
        data = await r.json()
        assert data["Capacity"]["Memory"] > 0


async def test_new_code_image_is_built_before_the_first_invocation(http: aiohttp.ClientSession) -> None:
    """Creating a function makes the pod build its code image; the cold start only binds it."""
    import hashlib

    pod = http.pod  # type: ignore[attr-defined]
    name = unique("prefetched")
    code = b64zip({"index.py": PY_ECHO, "marker.txt": name})
    sha_hex = hashlib.sha256(base64.b64decode(code)).hexdigest()
    image = pod.config.state_dir / "images" / f"{sha_hex}.erofs"
    await create(http, name, {"Version": "1", "Runtime": "python3", "Handler": "index.handler", "Code": code})
    for _ in range(200):
        if image.exists():
            break
        await asyncio.sleep(0.05)
    assert image.exists(), "the funclet did not build the new code's image ahead of its invocation"
    async with http.get(f"{pod.config.controller_url}/v1/resource") as r:
        prefetch = (await r.json())["CodePrefetch"]
    assert prefetch["Prepared"] >= 1 and prefetch["Failed"] == 0, prefetch
    built = image.stat()
    status, _, body = await invoke(http, brn(name, "1"), {"k": 1})
    assert status == 200 and json.loads(body)["event"] == {"k": 1}, body
    after = image.stat()
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)  # not rebuilt on warmup


async def test_funclet_code_prepare_refuses_bad_input(http: aiohttp.ClientSession) -> None:
    from easyfaas.unixhttp import UnixHTTPClient

    pod = http.pod  # type: ignore[attr-defined]
    missing = base64.b64encode(bytes(32)).decode()
    async with UnixHTTPClient(str(pod.config.funclet_sock)) as funclet:
        cases = [
            ({"CodeSha256": "not base64!", "Code": {"Location": "/nonexistent.zip"}}, 400,
             "InvalidParameterValueException"),
            ({"CodeSha256": missing, "Code": {"Location": ""}}, 400, "InvalidParameterValueException"),
            ({"CodeSha256": missing, "Code": {"Location": "/nonexistent/code.zip"}}, 500, "ServiceException"),
            ({"CodeSha256": missing, "Code": "zip"}, 400, None),
        ]
        for body, status, code in cases:
            got, answer = await funclet.request_json("POST", "/v1/funclet/code", json=body)
            assert got == status and isinstance(answer, dict), (body, got, answer)
            assert answer["Status"] == status and (code is None or answer["Code"] == code), answer
    assert not (pod.config.state_dir / "images" / f"{bytes(32).hex()}.erofs").exists()


async def test_operator_adds_a_runtime_by_configuration(http: aiohttp.ClientSession) -> None:
    """A new runtime is a directory with a runtime.yaml: no code change, no restart."""
    import shutil

    import yaml

    runtime_dir = http.pod.config.runtime_dir  # type: ignore[attr-defined]
    name = unique("shellish")
    target = runtime_dir / name
    target.mkdir()
    try:
        shutil.copy(runtime_dir / "nodejs" / "bootstrap.js", target / "bootstrap.js")
        node = yaml.safe_load((runtime_dir / "nodejs" / "runtime.yaml").read_text())["Bin"]
        (target / "runtime.yaml").write_text(yaml.safe_dump({
            "Name": name, "Bin": node, "Args": ["/var/runtime/bootstrap.js"], "Path": str(target),
            "Launch": "exec", "Env": {"GREETING": "from the operator's runtime"}}))
        async with http.get(f"{http.pod.config.stubs_url}/v1/runtimes/{name}/configuration") as r:  # type: ignore[attr-defined]
            assert r.status == 200, await r.text()
        fn = unique("custom")
        await create(http, fn, {"Runtime": name, "Handler": "app.handler", "Code": b64zip(
            {"app.js": "exports.handler = async (e) => process.env.GREETING;\n"})})
        status, _, body = await invoke(http, fn)
        assert (status, body) == (200, b"from the operator's runtime")
    finally:
        shutil.rmtree(target)
