"""The ``provided`` runtime against the native Python runtime: warm latency and cold starts.

Two ``provided`` functions, each with a keep-alive Runtime API client as its ``bootstrap``: a C one
(``bench/provided_bootstrap.c``, built here with ``cc -O2 -static``), the kind most
``provided.al2023`` functions deploy (Go, Rust, C++), and a stdlib Python one; and a native
``python3`` function with the same trivial handler. Warm c=1 runs are interleaved run for run, and
cold starts alternate between the runtimes, so that each ratio compares figures that saw the same
machine. The target, ≤ 2× native for both (runner/runtimes/README.md), is judged on the compiled
bootstrap (``compiled``); the Python bootstrap's figures are the top-level ones. Without a C
compiler, ``compiled`` says why it was skipped.

Where a cold start's time goes: the bootstrap is user code, and its own start (exec up to its first
``GET .../invocation/next``: for the Python one the interpreter and its imports) is measured bare,
outside any sandbox, after each round of cold starts (``cold.bootstrap_own_start``);
``cold.around_bootstrap_p50_ms`` is what is left of the ``provided`` cold start once that is taken
off, and its ratio to the native cold start is ``cold.ratio_p50_around_bootstrap``.
``warm_c1.throttled`` is how often, and for how long, the CPU quota of each function's sandbox
(``cpu.stat``) stalled it during the warm runs: the ``provided`` sandbox runs two processes (the
Runtime API server and the bootstrap) on one quota; ``cold.throttled`` counts the same for the
cold-started sandboxes, from their build (the standby runtime's start) to the end of their first call.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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


RUNS_KEY = {"python": "provided_c1", "compiled": "compiled_c1"}
BOOTSTRAP_C = Path(__file__).with_name("provided_bootstrap.c")


def compile_bootstrap(out_dir: str) -> tuple[bytes | None, str]:
    """The C bootstrap (``bench/provided_bootstrap.c``) built with ``cc -O2 -static``: (the binary,
    "") or, when there is no compiler or it fails, (None, why)."""
    cc = shutil.which("cc")
    if cc is None:
        return None, "no C compiler: cc is not on PATH"
    binary = os.path.join(out_dir, "bootstrap")
    try:
        proc = subprocess.run([cc, "-O2", "-static", "-s", "-o", binary, str(BOOTSTRAP_C)],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cc -O2 -static failed: {exc}"
    if proc.returncode != 0:
        return None, f"cc -O2 -static failed (exit status {proc.returncode}): {proc.stderr.strip()[-300:]}"
    with open(binary, "rb") as f:
        return f.read(), ""


def create_provided(pod: BenchPod, name: str, bootstrap: str | bytes, mark: str = "") -> Function:
    """A ``provided`` function whose zip has ``bootstrap`` (a script or a binary); a ``mark`` file
    makes its code, and so its code image, its own."""
    files: dict[str, str | bytes] = {"bootstrap": bootstrap}
    if mark:
        files["mark"] = mark
    body = {"Version": "1", "Runtime": "provided", "Handler": "index.handler", "Timeout": 10, "MemorySize": 64,
            "PodConcurrentQuota": 1, "Code": b64zip(files, executable=("bootstrap",))}
    status, text = pod.request("stubs", "POST", f"/v1/functions/{name}", json.dumps(body).encode(),
                               {ACCOUNT_HEADER: ACCOUNT, "Content-Type": "application/json"})
    if status != 200:
        raise BenchError(f"creating {name}: HTTP {status}: {text[:300]!r}")
    sha = base64.b64decode(json.loads(text)["Configuration"]["CodeSha256"]).hex()
    return Function(name, "provided", brn(name, "1"), sha)


def bootstrap_own_start(bootstrap: str | bytes) -> float:
    """Milliseconds from spawning ``bootstrap``, outside a sandbox, to its first request."""
    with tempfile.TemporaryDirectory(prefix="efbench-bootstrap-") as root, \
            socket.create_server(("127.0.0.1", 0)) as listener:
        path = os.path.join(root, "bootstrap")
        with open(path, "wb") as f:
            f.write(bootstrap.encode() if isinstance(bootstrap, str) else bootstrap)
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


def _warm_figures(native_runs: list[Any], custom_runs: list[Any]) -> dict[str, Any]:
    warm = {"native_p50_ms": _med(native_runs, "p50_ms"), "provided_p50_ms": _med(custom_runs, "p50_ms"),
            "native_p99_ms": _med(native_runs, "p99_ms"), "provided_p99_ms": _med(custom_runs, "p99_ms")}
    warm["ratio_p50"] = ratio(warm["provided_p50_ms"], warm["native_p50_ms"])
    warm["ratio_p99"] = ratio(warm["provided_p99_ms"], warm["native_p99_ms"])
    return warm


def _cold_figures(native_ms: list[float], custom_ms: list[float], own_ms: list[float],
                  throttled: list[dict[str, float]]) -> dict[str, Any]:
    cold = {"native": summary(native_ms), "provided": summary(custom_ms), "bootstrap_own_start": summary(own_ms),
            "samples_ms": {"native": [round(t, 3) for t in native_ms], "provided": [round(t, 3) for t in custom_ms],
                           "bootstrap_own_start": [round(t, 3) for t in own_ms]}}
    cold["ratio_p50"] = ratio(cold["provided"]["p50_ms"], cold["native"]["p50_ms"])
    around = [custom - own for custom, own in zip(custom_ms, own_ms)]
    cold["around_bootstrap_p50_ms"] = summary(around)["p50_ms"]
    cold["ratio_p50_around_bootstrap"] = ratio(cold["around_bootstrap_p50_ms"], cold["native"]["p50_ms"])
    if throttled:
        cold["throttled"] = {"sandboxes": len(throttled),
                             "throttled_sandboxes": sum(1 for t in throttled if t["nr_throttled"]),
                             "nr_throttled": sum(t["nr_throttled"] for t in throttled),
                             "throttled_ms": round(sum(t["throttled_ms"] for t in throttled), 3)}
    return cold


def provided_vs_native(pod: BenchPod, plan: Plan) -> dict[str, Any]:
    """Native python3 against ``provided`` with each bootstrap, interleaved: the stdlib Python
    client (the top-level figures) and, when ``cc`` is at hand, the C one (``compiled``)."""
    python = os.path.realpath(sys.executable)
    bootstraps: dict[str, str | bytes] = {"python": bootstrap_source(python)}
    with tempfile.TemporaryDirectory(prefix="efbench-cc-") as build:
        binary, skipped = compile_bootstrap(build)
    if binary is not None:
        bootstraps["compiled"] = binary
    prefix = {"python": "bprovc", "compiled": "bprovk"}
    native = pod.create_function("bprovnat", "python3", {"index.py": PY_TRIVIAL})
    custom = {kind: create_provided(pod, f"{prefix[kind]}us", code) for kind, code in bootstraps.items()}
    for fn in (native, *custom.values()):
        pod.invoke(fn)
    native_runs: list[Any] = []
    custom_runs: dict[str, list[Any]] = {kind: [] for kind in bootstraps}
    before = {fn.name: _sandbox_cpu_stat(pod, fn) for fn in (native, *custom.values())}
    for _ in range(plan.reps):
        native_runs.append(_wrk(pod.controller_url, [native.path], 1, plan))
        for kind, fn in custom.items():
            custom_runs[kind].append(_wrk(pod.controller_url, [fn.path], 1, plan))
    native_throttled = _throttled(before[native.name], _sandbox_cpu_stat(pod, native))
    warm = {}
    for kind, fn in custom.items():
        warm[kind] = _warm_figures(native_runs, custom_runs[kind])
        warm[kind]["throttled"] = {"native": native_throttled,
                                   "provided": _throttled(before[fn.name], _sandbox_cpu_stat(pod, fn))}
    count = max(2, min(5, plan.cold_python))
    cold_native = [pod.create_function(f"bprovcn{i}", "python3", {"index.py": f"# {i}\n" + PY_TRIVIAL})
                   for i in range(count)]
    cold_custom = {kind: [create_provided(pod, f"{prefix[kind]}c{i}", code, mark=str(i)) for i in range(count)]
                   for kind, code in bootstraps.items()}
    _wait_for_images(pod, cold_native + [fn for fns in cold_custom.values() for fn in fns])
    native_ms: list[float] = []
    custom_ms: dict[str, list[float]] = {kind: [] for kind in bootstraps}
    own_ms: dict[str, list[float]] = {kind: [] for kind in bootstraps}
    throttled: dict[str, list[dict[str, float]]] = {kind: [] for kind in bootstraps}
    with RawHTTPClient(pod.config.host, pod.config.controller_port) as client:
        for i, fn_native in enumerate(cold_native):
            time.sleep(COLD_GAP)
            native_ms.append(_timed_invoke(client, fn_native))
            for kind in bootstraps:
                time.sleep(COLD_GAP)
                custom_ms[kind].append(_timed_invoke(client, cold_custom[kind][i]))
                stat = _sandbox_cpu_stat(pod, cold_custom[kind][i])
                if stat:
                    throttled[kind].append(stat)
            for kind, code in bootstraps.items():
                own_ms[kind].append(bootstrap_own_start(code))
    cold = {kind: _cold_figures(native_ms, custom_ms[kind], own_ms[kind], throttled[kind]) for kind in bootstraps}
    out: dict[str, Any] = {"warm_c1": warm["python"], "cold": cold["python"],
                           "runs": {"native_c1": [r.to_dict() for r in native_runs],
                                    **{RUNS_KEY[kind]: [r.to_dict() for r in runs] for kind, runs in custom_runs.items()}}}
    if binary is None:
        out["compiled"] = {"skipped": skipped}
    else:
        out["compiled"] = {"warm_c1": warm["compiled"], "cold": cold["compiled"], "bootstrap_bytes": len(binary),
                           "built_with": "cc -O2 -static -s bench/provided_bootstrap.c"}
    return out
