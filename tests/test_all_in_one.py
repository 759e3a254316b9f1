"""The all-in-one form (easyfaas.all_in_one): controller, stubs and the HTTP trigger in one process
beside the real funclet, running the README's flow; and the one lifetime (easyfaas.daemon): SIGTERM
lets in-flight requests finish and the process exits 0, in the all-in-one process and in a
separate daemon.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web

from easyfaas.all_in_one import parse_all_in_one_options, part_options, PARTS
from easyfaas.function_code import ACCOUNT, b64zip, brn
from easyfaas.pod import ALL_IN_ONE, Pod, PodConfig, _tcp_http_ok, _under_prefix
from easyfaas.pod_leaks import kernel_leaks
from easyfaas.pod_names import PodNames, free_port

ROOT = Path(__file__).resolve().parent.parent
NODE_HELLO = "exports.handler = (event, context, callback) => { callback(null, 'Hello world!'); };\n"
PY_FN = (
    "import os, time\n"
    "TOKEN = os.urandom(8).hex()\n"
    "def handler(event, context):\n"
    "    if isinstance(event, dict) and event.get('sleep'):\n"
    "        time.sleep(event['sleep'])\n"
    "    return {'token': TOKEN, 'event': event}\n"
)


def unique(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


# ---- options of the all-in-one process (no pod needed) ------------------------------------------

def test_options_are_the_services_own_under_their_prefix() -> None:
    opts = parse_all_in_one_options(["--controller-port", "9101", "--stubs-port", "9102", "--controller-task-interval",
                                     "250ms", "--log-level", "warning", "--services", "httptrigger,stubs,controller"],
                                    environ={"EASYFAAS_STUBS_FUNCTION_DIR": "/srv/fd"})
    assert opts.services == ["stubs", "controller", "httptrigger"]  # start order
    by_name = {p.name: p for p in PARTS}
    controller = part_options(opts, by_name["controller"])
    stubs = part_options(opts, by_name["stubs"])
    trigger = part_options(opts, by_name["httptrigger"])
    assert (controller.port, controller.task_interval, controller.log_level) == (9101, 0.25, "warning")
    assert controller.repository_endpoint == "http://127.0.0.1:9102"  # stubs of the same process
    assert (stubs.port, stubs.function_dir, stubs.log_level) == (9102, "/srv/fd", "warning")
    assert trigger.controller_host == "http://127.0.0.1:9101"
    alone = parse_all_in_one_options(["--services", "controller"], environ={})
    assert part_options(alone, by_name["controller"]).repository_endpoint == "http://127.0.0.1:8002"


@pytest.mark.parametrize("argv,fragment", [
    (["--services", "controller,funclet"], "--services must name some of stubs, controller, httptrigger"),
    (["--services", ","], "--services must name"),
    (["--controller-port", "http"], "--controller-port"),
])
def test_bad_options_exit_with_a_message(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_all_in_one_options(argv, environ={})
    assert fragment in str(exc.value) + capsys.readouterr().err


def test_controller_checks_apply_in_the_all_in_one_form() -> None:
    opts = parse_all_in_one_options(["--controller-repository-auth-type", "bce"], environ={})
    with pytest.raises(SystemExit, match="only 'noauth' is"):
        part_options(opts, next(p for p in PARTS if p.name == "controller"))


def test_help_documents_the_prefixes() -> None:
    proc = subprocess.run([sys.executable, "-m", "easyfaas.all_in_one", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--services", "--event-loop", "--controller-port", "--stubs-function-dir",
                 "--httptrigger-controller-host", "EASYFAAS_CONTROLLER_PORT"):
        assert flag in proc.stdout, flag


def test_pod_gives_daemon_flags_under_their_prefix() -> None:
    assert _under_prefix("controller", ["--task-interval", "0.5", "--max_runtime_idle=30", "--log-level", "warning",
                                        "--event-loop", "asyncio", "-v", "2"]) == \
        ["--controller-task-interval", "0.5", "--controller-max-runtime-idle=30", "--log-level", "warning",
         "--event-loop", "asyncio", "-v", "2"]


# ---- a separate daemon: SIGTERM drains -----------------------------------------------------------

async def test_sigterm_lets_a_separate_daemon_finish_its_requests_and_exit_0() -> None:
    """The HTTP trigger in front of a slow upstream: SIGTERM arrives while a request waits for it."""
    arrived = asyncio.Event()

    async def slow_invoke(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return web.json_response({"statusCode": 200, "body": "finished"})

    upstream = web.Application()
    upstream.router.add_post("/v1/functions/{ref}/invocations", slow_invoke)
    runner = web.AppRunner(upstream)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "httptrigger", "--port", str(port), "--controller-host",
                             f"127.0.0.1:{upstream_port}", "--shutdown-timeout", "20"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(_tcp_http_ok, "127.0.0.1", port, "/healthz"):
            assert proc.poll() is None and time.monotonic() < deadline, "the trigger did not start"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            async def call_slow() -> tuple[int, str]:
                async with session.post(f"http://127.0.0.1:{port}/{ACCOUNT}/slow", data=b"{}") as resp:
                    return resp.status, await resp.text()

            call = asyncio.create_task(call_slow())
            await asyncio.wait_for(arrived.wait(), 30)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGINT)  # a second signal does not cut the drain short
            assert await asyncio.wait_for(call, 30) == (200, "finished")
        assert await asyncio.to_thread(proc.wait, 30) == 0
        err = proc.stderr.read().decode()
        assert "httptrigger_stopping" in err and "stop_signal_ignored" in err and "Traceback" not in err, err
        assert not _tcp_http_ok("127.0.0.1", port, "/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        await runner.cleanup()


def test_a_taken_port_is_a_clear_error_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "stubs", "--port", str(port), "--function-dir",
                               str(tmp_path / "fd"), "--runtime-dir", str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "stubs_failed" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ---- an all-in-one pod with the real funclet -----------------------------------------------------

@pytest.fixture(scope="module")
def aio(root_required: None) -> Iterator[Pod]:
    names = PodNames.new()
    base = Path(tempfile.mkdtemp(prefix=f"efaio-{names.tag}-"))
    config = PodConfig(state_dir=base / "state", run_dir=base / "run", controller_port=free_port(),
                       stubs_port=free_port(), httptrigger_port=free_port(), container_num=3,
                       pod_name=names.pod_name, bridge_name=names.bridge, bridge_ip=names.bridge_ip,
                       veth_prefix=names.veth_prefix, log_dir=base / "logs", all_in_one=True,
                       controller_args=["--task-interval", "0.5", "--drain-timeout", "10s"])
    pod = Pod(config)
    pod.start()
    try:
        yield pod
    finally:
        codes = pod.stop()
        leaks = kernel_leaks(config.state_dir, names)
        logs = {name: pod.log_tail(name, 15) for name in pod.config.daemons}
        if not leaks:
            shutil.rmtree(base, ignore_errors=True)
        assert not leaks, f"the pod left kernel objects behind: {leaks}\nlogs: {logs}"
        assert all(code == 0 for code in codes.values()), f"daemons exited uncleanly: {codes}\nlogs: {logs}"


@pytest.fixture
async def http(aio: Pod) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def create(http: aiohttp.ClientSession, pod: Pod, name: str, body: dict[str, Any]) -> None:
    async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}", data=json.dumps(body),
                         headers={"X-easyfaas-Account-Id": ACCOUNT}) as resp:
        assert resp.status == 200, await resp.text()


async def invoke(http: aiohttp.ClientSession, pod: Pod, ref: str, payload: Any = None) -> tuple[int, bytes]:
    async with http.post(f"{pod.config.controller_url}/v1/functions/{ref}/invocations",
                         data=json.dumps(payload if payload is not None else {}),
                         headers={"X-easyfaas-Account-Id": ACCOUNT}) as resp:
        return resp.status, await resp.read()


def test_controller_stubs_and_trigger_are_one_process_beside_the_funclet(aio: Pod) -> None:
    assert set(aio.procs) == {"funclet", ALL_IN_ONE}
    pid = aio.pid("controller")
    assert pid and pid == aio.pid("stubs") == aio.pid("httptrigger") == aio.pid(ALL_IN_ONE) != aio.pid("funclet")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"easyfaas.all_in_one" in f.read()
    with open(f"/proc/{pid}/maps") as f:
        assert "uvloop" in f.read(), "the all-in-one process runs on uvloop"
    log = aio.log_tail(ALL_IN_ONE, 200)
    for event in ("stubs_listening", "controller_listening", "httptrigger_listening"):
        assert event in log, log


async def test_readme_flow_nodejs_hello_world(aio: Pod, http: aiohttp.ClientSession) -> None:
    name = unique("testHelloWorld")
    await create(http, aio, name, {"Version": "1", "Runtime": "nodejs10", "Timeout": 5, "MemorySize": 128,
                                   "Handler": "index.handler", "PodConcurrentQuota": 10,
                                   "Code": b64zip({"index.js": NODE_HELLO})})
    assert await invoke(http, aio, brn(name, "1")) == (200, b"Hello world!")


async def test_readme_flow_python(aio: Pod, http: aiohttp.ClientSession) -> None:
    name = unique("py")
    await create(http, aio, name, {"Runtime": "python3", "Handler": "index.handler", "Timeout": 5,
                                   "Code": b64zip({"index.py": PY_FN})})
    status, body = await invoke(http, aio, brn(name, "$LATEST"), {"hello": "world"})
    assert status == 200, body
    first = json.loads(body)
    assert first["event"] == {"hello": "world"}
    status, body = await invoke(http, aio, name, {"n": 2})
    assert status == 200 and json.loads(body)["token"] == first["token"], "the warm sandbox serves the second call"


async def test_http_trigger_in_the_same_process(aio: Pod, http: aiohttp.ClientSession) -> None:
    name = unique("web")
    await create(http, aio, name, {"Runtime": "python3", "Handler": "index.handler", "Timeout": 5,
                                   "Code": b64zip({"index.py": "def handler(e, c):\n"
                                                   "    return {'statusCode': 201, 'body': e['rawPath']}\n"})})
    async with http.get(f"{aio.config.httptrigger_url}/{ACCOUNT}/{name}/hello") as resp:  # its function URL
        assert (resp.status, await resp.text()) == (201, "/hello")


async def _in_flight(http: aiohttp.ClientSession, pod: Pod) -> int:
    async with http.get(f"{pod.config.controller_url}/v1/runtimes") as resp:
        return sum(r["Concurrency"] for r in await resp.json())


async def test_sigterm_drains_in_flight_requests_and_exits_0(aio: Pod, http: aiohttp.ClientSession) -> None:
    """Last in this module: it stops the all-in-one process, then starts it again."""
    name = unique("drain")
    await create(http, aio, name, {"Runtime": "python3", "Handler": "index.handler", "Timeout": 10,
                                   "PodConcurrentQuota": 2, "Code": b64zip({"index.py": PY_FN})})
    assert (await invoke(http, aio, name))[0] == 200  # warm, so the calls below are in flight at once
    calls = [asyncio.create_task(invoke(http, aio, name, {"sleep": 1.5, "n": n})) for n in range(2)]
    deadline = time.monotonic() + 30
    while await _in_flight(http, aio) < 2:
        assert time.monotonic() < deadline, "the calls did not start"
        await asyncio.sleep(0.05)
    code = await asyncio.to_thread(aio.stop_daemon, ALL_IN_ONE)
    results = await asyncio.gather(*calls)
    assert [status for status, _ in results] == [200, 200], results
    assert code == 0, aio.log_tail(ALL_IN_ONE)
    assert not _tcp_http_ok(aio.config.host, aio.config.controller_port, "/healthz")
    assert not _tcp_http_ok(aio.config.host, aio.config.stubs_port, "/healthz")
    log = aio.log_tail(ALL_IN_ONE, 60)
    for event in ("controller_stopping", "controller_draining", "stubs_stopping"):
        assert event in log, log
    # Started again, it adopts the funclet's sandboxes and serves the stored function. (From this
    # thread: a daemon's parent-death signal comes when the thread that started it ends.)
    aio.start_daemon(ALL_IN_ONE)
    deadline = time.monotonic() + 30
    while (status := (await invoke(http, aio, name))[0]) != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert status == 200
