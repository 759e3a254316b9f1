"""Helpers for tests that run real pods: the session pod's size, pods of a test's own
(:class:`LivePod`, :func:`live_pod`) and their clients (:class:`PodClient` synchronous, LivePod's own
asynchronous), unique function names, a mixed :class:`Load` on a pod, waiting for a restarted
daemon, and asynchronous (event) invocations and their records.

A LivePod starts a pod with names of its own, talks to its daemons, and audits that nothing it made
is left behind — counting only this pod's processes, since other test runs may share the machine.
The names, ports, code zips and the kernel-leak audit themselves are in ``easyfaas`` (the
benchmarks use them too).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import psutil
import pytest

from easyfaas.function_code import ACCOUNT, b64zip, brn
from easyfaas.pod import Pod, PodConfig
from easyfaas.pod_leaks import kernel_leaks
from easyfaas.pod_names import PodNames, free_port
from easyfaas.unixhttp import UnixHTTPClient

OTHER_ACCOUNT = "0123456789abcdef0123456789abcdef"
E2E_SANDBOXES = 6  # the session pod's (tests/conftest.py)


# ---- the session pod and its clients --------------------------------------------------------------

def unique(name: str) -> str:
    return f"{name}{secrets.token_hex(3)}"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def http_call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class PodClient:
    """The pod's public APIs and the funclet's socket, from a test, synchronously."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.config = pod.config
        self.names = pod.names  # type: ignore[attr-defined]

    def stubs(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.config.host, self.config.stubs_port, timeout=60)
        data = b"" if body is None else json.dumps(body).encode()
        status, _, raw = http_call(conn, method, path, data, {"X-easyfaas-Account-Id": ACCOUNT})
        return status, raw

    def controller(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                   timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.config.host, self.config.controller_port, timeout=timeout)
        return http_call(conn, method, path, body, {"X-easyfaas-Account-Id": ACCOUNT, **(headers or {})})

    def funclet(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        conn = UnixHTTPConnection(str(self.config.funclet_sock))
        data = b"" if body is None else json.dumps(body).encode()
        status, _, raw = http_call(conn, method, path, data, {"Content-Type": "application/json"})
        return status, json.loads(raw) if raw else None

    def deploy(self, name: str, runtime: str, files: dict[str, str], *, env: dict[str, str] | None = None,
               memory: int = 128, timeout: int = 10, handler: str = "index.handler",
               executable: tuple[str, ...] = (), network: dict[str, Any] | None = None) -> None:
        body = {"Runtime": runtime, "Handler": handler, "Timeout": timeout, "MemorySize": memory,
                "PodConcurrentQuota": 2, "Code": b64zip(files, executable)}
        if env:
            body["Environment"] = {"Variables": env}
        if network is not None:
            body["Network"] = network
        status, raw = self.stubs("POST", f"/v1/functions/{name}", body)
        assert status == 200, raw

    def invoke(self, name: str, event: object = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        payload = b"{}" if event is None else json.dumps(event).encode()
        return self.controller("POST", f"/v1/functions/{brn(name, '$LATEST')}/invocations", payload, timeout=timeout)

    def slots(self) -> list[dict[str, Any]]:
        status, _, raw = self.controller("GET", "/v1/runtimes")
        assert status == 200
        return json.loads(raw)

    def slot_of(self, name: str) -> dict[str, Any] | None:
        for slot in self.slots():
            if f":function:{name}:" in slot.get("FunctionBrn", "") and slot.get("State") == "warm":
                return slot
        return None

    def invalidate(self, slot_id: str) -> None:
        status, _, raw = self.controller("POST", f"/v1/runtimes/{slot_id}/invalidate")
        assert status == 200, raw

    def veth(self, slot_id: str) -> str:
        return f"{self.names.veth_prefix}{int(slot_id.rsplit('-c', 1)[1])}"

    @property
    def gateway(self) -> str:
        return self.names.bridge_ip.split("/")[0]


# ---- pods of a test's own ------------------------------------------------------------------------

PY_FN = (
    "import os, time\n"
    "TOKEN = os.urandom(8).hex()\n"
    "def handler(event, context):\n"
    "    if event.get('sleep'):\n"
    "        time.sleep(event['sleep'])\n"
    "    if event.get('alloc'):\n"
    "        hog = b'x' * (event['alloc'] << 20)\n"
    "        return {'allocated': len(hog)}\n"
    "    if event.get('exit'):\n"
    "        os._exit(event['exit'])\n"
    "    return {'token': TOKEN, 'pid': os.getpid(), 'n': event.get('n')}\n"
)


class LivePod:
    """A real pod of its own, and the client side of its APIs."""

    def __init__(self, *, container_num: int = 2, funclet_args: tuple[str, ...] = (),
                 controller_args: tuple[str, ...] = (), scaling: dict[str, Any] | None = None) -> None:
        self.names = PodNames.new()
        self.base = Path(tempfile.mkdtemp(prefix=f"efpool-{self.names.tag}-"))
        extra: list[str] = []
        if scaling:
            path = self.base / "scaling.json"
            path.write_text(json.dumps(scaling))  # JSON is YAML
            extra = ["--function-scaling", str(path)]
        self.config = PodConfig(
            state_dir=self.base / "state", run_dir=self.base / "run", controller_port=free_port(),
            stubs_port=free_port(), container_num=container_num, pod_name=self.names.pod_name,
            bridge_name=self.names.bridge, bridge_ip=self.names.bridge_ip, veth_prefix=self.names.veth_prefix,
            log_dir=self.base / "logs", stop_timeout=30,
            funclet_args=["--runner-ping-interval", "0.5", "--max-runner-defunct", "3", *funclet_args],
            controller_args=["--task-interval", "0.2", *extra, *controller_args])
        self.pod = Pod(self.config)
        self.zygotes: set[int] = set()
        self.http: aiohttp.ClientSession | None = None
        self.funclet = UnixHTTPClient(str(self.config.funclet_sock), timeout=10)

    # -- lifetime ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.pod.start()
        self.note_zygote()

    def note_zygote(self) -> None:
        """Remember this pod's zygote (and so, later, whether it outlived the pod)."""
        pid = self.pod.pid("funclet")
        if pid:
            for child in psutil.Process(pid).children():
                if "runner.zygote" in " ".join(child.cmdline()):
                    self.zygotes.add(child.pid)

    def stop(self) -> dict[str, int | None]:
        return self.pod.stop()

    def leaks(self) -> list[str]:
        """This pod's kernel objects and processes that are still there (after stop)."""
        found = [leak for leak in kernel_leaks(self.config.state_dir, self.names) if not leak.startswith("process ")]
        for pid in self.zygotes:
            if psutil.pid_exists(pid):
                try:
                    if "runner.zygote" in " ".join(psutil.Process(pid).cmdline()):
                        found.append(f"zygote process {pid}")
                except psutil.Error:
                    pass
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(self.config.state_dir) in cmd or str(self.config.run_dir) in cmd:
                found.append(f"process {proc.pid}: {cmd[:100]}")
        return found

    def wait_no_leaks(self, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while (leaks := self.leaks()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return leaks

    def cleanup(self) -> None:
        if not self.leaks():
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {n}\n{self.pod.log_tail(n, lines)}" for n in ("funclet", "controller"))

    # -- APIs --------------------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self.http

    async def close_clients(self) -> None:
        if self.http is not None:
            await self.http.close()
        await self.funclet.close()
        self.funclet = UnixHTTPClient(str(self.config.funclet_sock), timeout=10)

    async def create(self, name: str, **fields: Any) -> dict[str, Any]:
        body = {"Runtime": "python3", "Handler": "index.handler", "Timeout": 30, "MemorySize": 128,
                "Code": b64zip({"index.py": PY_FN}), **fields}
        async with self.session().post(f"{self.config.stubs_url}/v1/functions/{name}",
                                       headers={"X-easyfaas-Account-Id": ACCOUNT}, data=json.dumps(body)) as resp:
            text = await resp.text()
            assert resp.status == 200, text
            return json.loads(text)

    async def invoke(self, name: str, event: Any = None, **params: str) -> tuple[int, Any]:
        async with self.session().post(f"{self.config.controller_url}/v1/functions/{name}/invocations",
                                       headers={"X-easyfaas-Account-Id": ACCOUNT}, params=params or None,
                                       data=json.dumps(event or {})) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw.decode(errors="replace")

    async def get(self, path: str) -> Any:
        async with self.session().get(f"{self.config.controller_url}{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def runtimes(self) -> list[dict[str, Any]]:
        return await self.get("/v1/runtimes")

    async def resource(self) -> dict[str, Any]:
        return await self.get("/v1/resource")

    async def containers(self) -> list[dict[str, Any]]:
        status, data = await self.funclet.request_json("GET", "/v1/funclet/list")
        assert status == 200, data
        return data

    async def slot_of(self, name: str) -> dict[str, Any]:
        matches = [r for r in await self.runtimes() if f":function:{name}:" in r["FunctionBrn"]]
        assert matches, f"no slot serves {name}"
        return matches[0]

    async def runtime_pid(self, slot_id: str) -> int:
        """Host pid of the language runtime in a sandbox (the runner's child)."""
        status, info = await self.funclet.request_json("GET", f"/v1/funclet/container/{slot_id}")
        assert status == 200, info
        children = psutil.Process(info["HostPid"]).children()
        assert children, f"sandbox {slot_id} runs no runtime"
        return children[0].pid

    async def until(self, predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout}s: {what}\n{self.log_tail()}")
            await asyncio.sleep(0.1)


def live_pod(**kw: Any) -> Iterator[LivePod]:
    if os.geteuid() != 0:
        pytest.skip("needs root: sandboxes are built from cgroups, namespaces and mounts")
    pod = LivePod(**kw)
    pod.start()
    try:
        yield pod
    finally:
        codes = pod.stop()
        leaks = pod.wait_no_leaks()
        logs = pod.log_tail()
        pod.cleanup()
        assert not leaks, f"the pod left kernel objects behind: {leaks}\n{logs}"
        assert all(code == 0 for code in codes.values()), f"daemons exited uncleanly: {codes}\n{logs}"


# ---- load ----------------------------------------------------------------------------------------

NODE_FN = "exports.handler = async (event) => ({node: true, n: event.n});\n"


class Load:
    """Requests to several functions from ``workers`` concurrent clients until stopped; every
    outcome is counted (HTTP status and error type, or the client-side error)."""

    def __init__(self, lp: LivePod, functions: list[str], workers: int = 4, sleep: float = 0.2) -> None:
        self.lp = lp
        self.functions = functions
        self.workers = workers
        self.sleep = sleep
        self.outcomes: Counter[str] = Counter()
        self.unexplained: list[Any] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def stop(self) -> Counter[str]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes

    async def _worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            name = rng.choice(self.functions)
            try:
                status, body = await self.lp.invoke(name, {"sleep": rng.random() * self.sleep, "n": seed})
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.outcomes[f"connection: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                self.outcomes["200"] += 1
            elif isinstance(body, dict) and (body.get("errorType") or body.get("Code")):
                self.outcomes[f"{status} {body.get('errorType') or body.get('Code')}"] += 1
            else:
                self.outcomes[f"{status} ?"] += 1
                self.unexplained.append((status, body))


async def stored_functions(lp: LivePod) -> dict[str, str]:
    """Every stored function and its code hash, as the registry lists them."""
    async with lp.session().get(f"{lp.config.stubs_url}/v1/functions",
                                headers={"X-easyfaas-Account-Id": "df391b08c64c426a81645468c75163a5"}) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    items = data.get("Functions", data) if isinstance(data, dict) else data
    return {f["FunctionName"]: f["CodeSha256"] for f in items}


async def settled(lp: LivePod) -> bool:
    """Nothing in flight or queued, every sandbox known to both the controller and the funclet."""
    res = await lp.resource()
    runtimes = {r["RuntimeID"] for r in await lp.runtimes()}
    containers = {c["ContainerID"] for c in await lp.containers()}
    return (res["Queue"]["Waiting"] == 0 and runtimes == containers
            and all(r["Concurrency"] == 0 for r in await lp.runtimes()))


async def wait_healthy(lp: LivePod, daemon: str, old_pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = lp.pod.pid(daemon)
        if pid and pid != old_pid and lp.pod.probe(daemon)():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{daemon} was not restarted\n{lp.log_tail()}")


# ---- asynchronous invocations ------------------------------------------------------------------

H = {"X-easyfaas-Account-Id": ACCOUNT}
EVENT = {**H, "X-easyfaas-Invoke-Type": "event"}
FINAL = ("succeeded", "failed", "expired")


async def enqueue(lp: LivePod, name: str, event: Any) -> tuple[int, str, dict[str, Any] | None]:
    async with lp.session().post(f"{lp.config.controller_url}/v1/functions/{name}/invocations",
                                 headers=EVENT, data=json.dumps(event)) as resp:
        raw = await resp.read()
        body = json.loads(raw) if raw and resp.content_type == "application/json" else None
        return resp.status, resp.headers.get("X-easyfaas-Request-Id", ""), body


async def records(lp: LivePod, name: str) -> dict[str, dict[str, Any]]:
    async with lp.session().get(f"{lp.config.controller_url}/v1/invocations", headers=H,
                                params={"FunctionName": name, "Limit": "1000"}) as resp:
        assert resp.status == 200, await resp.text()
        return {r["RequestId"]: r for r in (await resp.json())["Invocations"]}


async def all_finished(lp: LivePod, name: str, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await records(lp, name)
        except (aiohttp.ClientError, asyncio.TimeoutError, AssertionError):
            found = {}
        if found and all(found.get(rid, {}).get("Status") in FINAL for rid in ids):
            return found
        if time.monotonic() > deadline:
            missing = [rid for rid in ids if found.get(rid, {}).get("Status") not in FINAL]
            raise AssertionError(f"{len(missing)} events never finished, e.g. {missing[:3]}\n{lp.log_tail()}")
        await asyncio.sleep(0.3)
