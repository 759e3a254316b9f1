"""A real pod for the benchmarks, and the blocking HTTP calls the scenarios make to it.

The pod is :class:`easyfaas.pod.Pod` with names of its own (bridge, veths, cgroups, directories:
``easyfaas.pod_names.PodNames``), the controller at ``--log-level warning`` so that logging is not
what is measured, warm sandboxes kept for the whole run (``--max-runtime-idle``), and a kernel-leak
audit after it stops. ``controller_loop`` is the controller's ``--event-loop`` (it runs on uvloop
unless told otherwise; the funclet always runs on asyncio).
"""

from __future__ import annotations

import http.client
import base64
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from easyfaas.function_code import ACCOUNT, b64zip, brn
from easyfaas.pod import Pod, PodConfig
from easyfaas.pod_leaks import kernel_leaks
from easyfaas.pod_names import PodNames, free_port

ACCOUNT_HEADER = "X-easyfaas-Account-Id"

class BenchError(RuntimeError):
    """A step of a benchmark failed (an invocation answered an error, the pod did not start...)."""


@dataclass
class Function:
    name: str
    runtime: str
    brn: str
    code_sha256_hex: str = ""

    @property
    def path(self) -> str:
        return f"/v1/functions/{self.brn}/invocations"


@dataclass
class BenchPod:
    container_num: int
    controller_loop: str = "auto"
    all_in_one: bool = False  # controller and stubs in one process (easyfaas.all_in_one)
    names: PodNames = field(default_factory=PodNames.new)
    pod: Pod | None = None
    base: Path | None = None
    _conns: dict[str, http.client.HTTPConnection] = field(default_factory=dict)

    # ---- lifetime ----------------------------------------------------------------------------------

    def start(self) -> None:
        n = self.names
        self.base = Path(tempfile.mkdtemp(prefix=f"efbench-{n.tag}-"))
        config = PodConfig(
            state_dir=self.base / "state", run_dir=self.base / "run", controller_port=free_port(),
            stubs_port=free_port(), container_num=self.container_num, pod_name=n.pod_name, bridge_name=n.bridge,
            bridge_ip=n.bridge_ip, veth_prefix=n.veth_prefix, log_dir=self.base / "logs",
            controller_args=["--log-level", os.environ.get("EFBENCH_CONTROLLER_LOG", "warning"),
                             "--max-runtime-idle", "3600", "--task-interval", "2",
                             "--event-loop", self.controller_loop,
                             # bench/async_queue.py measures how fast events are accepted; at the
                             # default per-function bound (10,000) a 5 s run at c=64 would measure
                             # the bound instead (its 429s are tested in tests/test_async_api.py).
                             "--event-queue-length", "100000"],
            # EFBENCH_FUNCLET_LOG=info (and EFBENCH_CONTROLLER_LOG=info) keep the warmup timings in
            # the logs, for work on the cold path.
            stubs_args=["--log-level", "warning"],
            funclet_args=["--log-level", os.environ.get("EFBENCH_FUNCLET_LOG", "warning")],
            all_in_one=self.all_in_one, start_timeout=120.0)
        self.pod = Pod(config)
        self.pod.start()
        self.wait_pool_ready(self.container_num, timeout=120.0)

    def stop(self) -> list[str]:
        """Stop the pod; the list of kernel objects it left behind (empty when clean)."""
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        if self.pod is None or self.base is None:
            return []
        ours = self._descendants()
        codes = self.pod.stop(timeout=120.0)
        leaks = [leak for leak in _kernel_leaks(self.pod.config.state_dir, self.names) if _is_ours(leak, ours)]
        leaks += [f"process {pid} still alive" for pid in ours if psutil.pid_exists(pid)
                  and f"process {pid}:" not in " ".join(leaks)]
        bad = {name: code for name, code in codes.items() if code != 0}
        if bad:
            leaks.append(f"daemons exited uncleanly: {bad}")
        if not leaks:
            shutil.rmtree(self.base, ignore_errors=True)
        self.pod = None
        return leaks

    def _descendants(self) -> set[int]:
        """Every process under our daemons (zygote, runners, runtimes), to audit after the stop."""
        pids: set[int] = set()
        for pid in self.daemon_pids().values():
            try:
                pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def wait_pool_ready(self, count: int, timeout: float) -> None:
        """Until the controller knows ``count`` cold slots (the funclet built them all)."""
        deadline = time.monotonic() + timeout
        cold = 0
        while time.monotonic() < deadline:
            try:
                cold = sum(1 for s in self.get_json("controller", "/v1/runtimes")
                           if s["State"] == "cold" and s["Available"])
            except (OSError, BenchError, ValueError):
                cold = 0
            if cold >= count:
                return
            time.sleep(0.2)
        raise BenchError(f"only {cold} of {count} sandboxes became available in {timeout:g}s")

    @property
    def config(self) -> PodConfig:
        assert self.pod is not None
        return self.pod.config

    @property
    def controller_url(self) -> str:
        return self.config.controller_url

    def daemon_pids(self) -> dict[str, int]:
        assert self.pod is not None
        return {name: proc.pid for name, proc in self.pod.procs.items()}

    def log_tail(self, daemon: str) -> str:
        return self.pod.log_tail(daemon, 20) if self.pod else ""

    # ---- HTTP --------------------------------------------------------------------------------------

    def _conn(self, which: str) -> http.client.HTTPConnection:
        conn = self._conns.get(which)
        if conn is None:
            port = self.config.controller_port if which == "controller" else self.config.stubs_port
            conn = self._conns[which] = http.client.HTTPConnection(self.config.host, port, timeout=60)
        return conn

    def request(self, which: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = self._conn(which)
        for attempt in (1, 2):
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()  # a kept-alive connection the server closed: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, which: str, path: str) -> Any:
        status, body = self.request(which, "GET", path)
        if status != 200:
            raise BenchError(f"GET {path} on {which}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def create_function(self, name: str, runtime: str, files: dict[str, str], *, handler: str = "index.handler",
                        memory_mb: int = 64, quota: int = 1, timeout_s: int = 10) -> Function:
        """A function published as version 1 (numeric versions are cached by the controller)."""
        body = {"Version": "1", "Runtime": runtime, "Handler": handler, "Timeout": timeout_s,
                "MemorySize": memory_mb, "PodConcurrentQuota": quota, "Code": b64zip(files)}
        status, text = self.request("stubs", "POST", f"/v1/functions/{name}", json.dumps(body).encode(),
                                    {ACCOUNT_HEADER: ACCOUNT, "Content-Type": "application/json"})
        if status != 200:
            raise BenchError(f"creating {name}: HTTP {status}: {text[:300]!r}")
        sha = base64.b64decode(json.loads(text)["Configuration"]["CodeSha256"]).hex()
        return Function(name, runtime, brn(name, "1"), sha)

    def code_image_ready(self, fn: Function) -> bool:
        """Whether the funclet has the function's code image built and mounted."""
        return os.path.ismount(self.config.state_dir / "images" / fn.code_sha256_hex)

    def invoke(self, fn: Function, payload: bytes = b'{"n": 1}') -> bytes:
        status, body = self.request("controller", "POST", fn.path, payload,
                                    {ACCOUNT_HEADER: ACCOUNT, "Content-Type": "application/json"})
        if status != 200:
            raise BenchError(f"invoking {fn.name}: HTTP {status}: {body[:300]!r}")
        return body

    def funclet_list(self) -> list[dict[str, Any]]:
        """GET /v1/funclet/list on the funclet's unix socket (HostPid, State, Identity per sandbox)."""
        return self.funclet_get("/v1/funclet/list")

    def funclet_get(self, path: str) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.config.funclet_sock))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: funclet\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"funclet GET {path} failed: {head[:100]!r}")
        if b"chunked" in head.lower():
            body = _dechunk(body)
        return json.loads(body)


def _is_ours(leak: str, ours: set[int]) -> bool:
    """kernel_leaks reports every zygote on the machine; other pods (tests running beside the
    benchmark) have theirs, so a zygote counts only if it was under our funclet."""
    if leak.startswith("process ") and "runner.zygote" in leak:
        pid = leak.split()[1].rstrip(":")
        return pid.isdigit() and int(pid) in ours
    return True


def _kernel_leaks(state_dir: Path, names: PodNames) -> list[str]:
    # The audit walks /sys/fs/cgroup, where other pods on this machine add and remove cgroups
    # while it looks: a directory vanishing under the walk is not a leak of ours, look again.
    for attempt in range(5):
        try:
            return kernel_leaks(state_dir, names)
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


def run_standalone(measure: Callable[[BenchPod], dict[str, Any]], sandboxes: int = 4) -> int:
    """A benchmark module's ``main``: ``measure`` a pod of ``sandboxes`` started for it, print the
    figures as JSON, and fail (exit status 1) when the pod left kernel objects behind."""
    pod = BenchPod(sandboxes)
    try:
        pod.start()
        result = measure(pod)
    finally:
        leaks = pod.stop()
    print(json.dumps(result, indent=2))
    if leaks:
        print(f"the pod left kernel objects behind: {leaks}", file=sys.stderr)
        return 1
    return 0
