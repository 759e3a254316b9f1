"""The ``provided`` runtime against the native Python runtime: warm latency and cold starts.

A ``provided`` function whose ``bootstrap`` is a small keep-alive Runtime API client (stdlib
Python, as a custom runtime in any language would be) and a native ``python3`` function with the
same trivial handler; warm c=1 runs interleaved run for run, and cold starts alternate between the
two runtimes, so that each ratio compares figures that saw the same machine. The target is a
ratio ≤ 2 for both (runner/runtimes/README.md).

Where a cold start's time goes: the bootstrap is user code, and its own start (the interpreter and
its imports, up to its first ``GET .../invocation/next``) is measured bare, outside any sandbox,
after each pair of cold starts (``cold.bootstrap_own_start``); ``cold.around_bootstrap_p50_ms`` is
what is left of the ``provided`` cold start once that is taken off, and its ratio to the native
cold start is ``cold.ratio_p50_around_bootstrap``. ``warm_c1.throttled`` is how often, and for how
long, the CPU quota of each function's sandbox (``cpu.stat``) stalled it during the warm runs: the
``provided`` sandbox runs two processes (the Runtime API server and the bootstrap) on one quota.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.client import RawHTTPClient
from bench.pod import ACCOUNT_HEADER, BenchError, BenchPod, Function
from bench.scenarios import COLD_GAP, PY_TRIVIAL, Plan, _med, _timed_invoke, _wrk
from bench.stats import ratio, summary
from easyfaas.function_code import ACCOUNT, b64zip, brn


def bootstrap_source(python: str) -> str:
    """A Runtime API loop over one keep-alive connection: the event back as the result."""
    return f"""#!{python} -IS
import http.client, os
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
conn = http.client.HTTPConnection(host, int(port))
base = "/2018-06-01/runtime/invocation/"
while True:
    conn.request("GET", base + "next")
    reply = conn.getresponse()
    event = reply.read()
    request_id = reply.getheader("Lambda-Runtime-Aws-Request-Id")
    conn.request("POST", base + request_id + "/response", body=event,
                 headers={{"Content-Type": "application/json"}})
    conn.getresponse().read()
"""


def create_provided(pod: BenchPod, name: str, python: str, mark: str = "") -> Function:
    files = {"bootstrap": bootstrap_source(python) + (f"# {mark}\n" if mark else "")}
    body = {"Version": "1", "Runtime": "provided", "Handler": "index.handler", "Timeout": 10, "MemorySize": 64,
            "PodConcurrentQuota": 1, "Code": b64zip(files, executable=("bootstrap",))}
    status, text = pod.request("stubs", "POST", f"/v1/functions/{name}", json.dumps(body).encode(),
                               {ACCOUNT_HEADER: ACCOUNT, "Content-Type": "application/json"})
    if status != 200:
        raise BenchError(f"creating {name}: HTTP {status}: {text[:300]!r}")
    sha = base64.b64decode(json.loads(text)["Configuration"]["CodeSha256"]).hex()
    return Function(name, "provided", brn(name, "1"), sha)


def bootstrap_own_start(source: str) -> float:
    """Milliseconds from spawning ``source`` as a bootstrap, outside a sandbox, to its first request."""
    with tempfile.TemporaryDirectory(prefix="efbench-bootstrap-") as root, \
            socket.create_server(("127.0.0.1", 0)) as listener:
        path = os.path.join(root, "bootstrap")
        with open(path, "w") as f:
            f.write(source)
        os.chmod(path, 0o755)
        env = {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:%d" % listener.getsockname()[1], "PATH": "/usr/bin:/bin"}
        listener.settimeout(30)
        t0 = time.perf_counter()
        proc = subprocess.Popen([path], cwd=root, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                conn.recv(4096)
                elapsed = (time.perf_counter() - t0) * 1000
        finally:
            proc.kill()
            proc.wait()
    return elapsed


def _sandbox_cpu_stat(pod: BenchPod, fn: Function) -> dict[str, float]:
    """Throttling counters of the sandbox that runs ``fn`` (its cgroup's cpu.stat); {} if unknown."""
    for sandbox in pod.funclet_list():
        pid = sandbox.get("HostPid")
        if not pid or sandbox.get("FunctionBrn") != fn.brn:
            continue
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return {}
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(","):
                stat_path = f"/sys/fs/cgroup/cpu{path}/cpu.stat"
            elif controllers == "":
                stat_path = f"/sys/fs/cgroup/unified{path}/cpu.stat"
            else:
                continue
            try:
                with open(stat_path) as f:
                    stat = dict(line.split() for line in f if line.strip())
            except OSError:
                continue
            if "nr_throttled" not in stat:
                continue
            throttled_ms = (int(stat["throttled_time"]) / 1e6 if "throttled_time" in stat
                            else int(stat.get("throttled_usec", 0)) / 1e3)
            return {"nr_throttled": int(stat["nr_throttled"]), "throttled_ms": throttled_ms}
    return {}


def _throttled(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    if not before or not after:
        return None
    return {key: round(after[key] - before[key], 3) for key in after}


def _wait_for_images(pod: BenchPod, fns: list[Function]) -> None:
    deadline = time.monotonic() + 60
    while any(not pod.code_image_ready(fn) for fn in fns):
        if time.monotonic() > deadline:
            raise BenchError("the pod did not build the provided functions' code images within 60 s")
        time.sleep(0.005)


def provided_vs_native(pod: BenchPod, plan: Plan) -> dict[str, Any]:
    python = os.path.realpath(sys.executable)
    native = pod.create_function("bprovnat", "python3", {"index.py": PY_TRIVIAL})
    custom = create_provided(pod, "bprovcus", python)
    for fn in (native, custom):
        pod.invoke(fn)
    native_runs, custom_runs = [], []
    before = {fn.name: _sandbox_cpu_stat(pod, fn) for fn in (native, custom)}
    for _ in range(plan.reps):
        native_runs.append(_wrk(pod.controller_url, [native.path], 1, plan))
        custom_runs.append(_wrk(pod.controller_url, [custom.path], 1, plan))
    warm = {"native_p50_ms": _med(native_runs, "p50_ms"), "provided_p50_ms": _med(custom_runs, "p50_ms"),
            "native_p99_ms": _med(native_runs, "p99_ms"), "provided_p99_ms": _med(custom_runs, "p99_ms")}
    warm["ratio_p50"] = ratio(warm["provided_p50_ms"], warm["native_p50_ms"])
    warm["throttled"] = {"native": _throttled(before[native.name], _sandbox_cpu_stat(pod, native)),
                         "provided": _throttled(before[custom.name], _sandbox_cpu_stat(pod, custom))}
    count = max(2, min(3, plan.cold_python))
    cold_native = [pod.create_function(f"bprovcn{i}", "python3", {"index.py": f"# {i}\n" + PY_TRIVIAL})
                   for i in range(count)]
    cold_custom = [create_provided(pod, f"bprovcc{i}", python, mark=str(i)) for i in range(count)]
    _wait_for_images(pod, cold_native + cold_custom)
    native_ms, custom_ms, bootstrap_ms = [], [], []
    with RawHTTPClient(pod.config.host, pod.config.controller_port) as client:
        for fn_native, fn_custom in zip(cold_native, cold_custom):
            time.sleep(COLD_GAP)
            native_ms.append(_timed_invoke(client, fn_native))
            time.sleep(COLD_GAP)
            custom_ms.append(_timed_invoke(client, fn_custom))
            bootstrap_ms.append(bootstrap_own_start(bootstrap_source(python)))
    cold = {"native": summary(native_ms), "provided": summary(custom_ms), "bootstrap_own_start": summary(bootstrap_ms)}
    cold["ratio_p50"] = ratio(cold["provided"]["p50_ms"], cold["native"]["p50_ms"])
    around = [custom - own for custom, own in zip(custom_ms, bootstrap_ms)]
    cold["around_bootstrap_p50_ms"] = summary(around)["p50_ms"]
    cold["ratio_p50_around_bootstrap"] = ratio(cold["around_bootstrap_p50_ms"], cold["native"]["p50_ms"])
    return {"warm_c1": warm, "cold": cold,
            "runs": {"native_c1": [r.to_dict() for r in native_runs], "provided_c1": [r.to_dict() for r in custom_runs]}}
