"""The benchmark scenarios. Each takes a started :class:`BenchPod` and returns plain figures.

* :func:`warm_path` — warm invoke latency (c=1) and throughput (c=64) of a trivial Python function,
  throughput with ``many`` functions round-robin, each interleaved run for run with the bare aiohttp
  echo, so that a ratio compares runs that saw the same machine;
* :func:`cold_starts` — functions never invoked before, one at a time, on free pool sandboxes;
* :func:`cold_start_rate` — back-to-back cold starts of distinct functions from a few clients;
* :func:`fill_warm` — more warm Python sandboxes, for the footprint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.client import RawHTTPClient
from bench.pod import ACCOUNT_HEADER, BenchError, BenchPod, Function
from bench.stats import median, ratio, summary
from bench.wrk import WrkResult, run_wrk
from easyfaas.function_code import ACCOUNT

PY_TRIVIAL = "def handler(event, context):\n    return event\n"
NODE_TRIVIAL = "exports.handler = async (event) => event;\n"
PAYLOAD = b'{"n": 1}'
# Between two measured cold starts: time for the pool to refill what the previous one took (a
# pre-started Node.js runtime takes ~50 ms to start).
COLD_GAP = 0.15
HEADERS = {ACCOUNT_HEADER: ACCOUNT}


@dataclass
class Plan:
    """How much of everything one run does (``full`` for `make bench`, ``smoke`` for CI)."""

    name: str
    wrk_seconds: float
    reps: int
    warm_quota: int
    many_functions: int
    cold_python: int
    cold_python_shared: int
    cold_node: int
    rate_functions: int
    rate_clients: int
    footprint_python: int
    interpreter_runs: int

    @property
    def many_quota(self) -> int:
        """Room for the requests a function can get at once when c=64 is spread round-robin over them."""
        return max(4, -(-64 // max(1, self.many_functions)))

    @property
    def sandboxes(self) -> int:
        """Enough pool sandboxes that no cold start has to evict a warm one."""
        warm = -(-64 // self.warm_quota)
        python = warm + self.many_functions + self.cold_python + self.cold_python_shared + self.rate_functions
        return max(python, self.footprint_python) + self.cold_node + 8

    @classmethod
    def full(cls) -> Plan:
        return cls("full", wrk_seconds=5, reps=3, warm_quota=32, many_functions=100, cold_python=40,
                   cold_python_shared=20, cold_node=20,
                   rate_functions=60, rate_clients=4, footprint_python=200, interpreter_runs=20)

    @classmethod
    def smoke(cls) -> Plan:
        return cls("smoke", wrk_seconds=1, reps=1, warm_quota=32, many_functions=4, cold_python=3,
                   cold_python_shared=2, cold_node=2,
                   rate_functions=4, rate_clients=2, footprint_python=3, interpreter_runs=3)


def _wrk(url: str, paths: list[str], connections: int, plan: Plan) -> WrkResult:
    result = run_wrk(url, paths, connections=connections, seconds=plan.wrk_seconds, headers=HEADERS)
    if result.errors:
        raise BenchError(f"wrk saw {result.errors} errors against {url}{paths[0]} (c={connections})")
    return result


def _med(runs: list[WrkResult], attr: str) -> float:
    return round(median(getattr(r, attr) for r in runs), 3)


def free_slots(pod: BenchPod) -> int:
    return sum(1 for s in pod.get_json("controller", "/v1/runtimes") if s["State"] == "cold" and s["Available"])


def prefetch_stats(pod: BenchPod) -> dict[str, Any]:
    return pod.get_json("controller", "/v1/resource").get("CodePrefetch") or {}


def create_many(pod: BenchPod, prefix: str, runtime: str, count: int, *, quota: int = 1,
                own_code: bool = False, prepared: dict[str, Any] | None = None) -> list[Function]:
    """``count`` trivial functions; with ``own_code`` each has code of its own (its own code image).

    Returns once the pod has built the new code images ahead of need (its code prefetch), as it
    does for a function deployed a moment before its first call; ``prepared`` gets how long that
    took after the last create.
    """
    fns = []
    for i in range(count):
        name = f"{prefix}{i}"
        mark = ("// " if runtime == "nodejs" else "# ") + name + "\n" if own_code else ""
        files = {"index.js": mark + NODE_TRIVIAL} if runtime == "nodejs" else {"index.py": mark + PY_TRIVIAL}
        fns.append(pod.create_function(name, runtime, files, quota=quota))
    t0 = time.perf_counter()
    deadline = t0 + 60 + count
    waiting = list(fns)
    while waiting:
        waiting = [fn for fn in waiting if not pod.code_image_ready(fn)]
        if waiting and time.perf_counter() > deadline:
            raise BenchError(f"the pod did not build {len(waiting)} code images within {deadline - t0:.0f}s "
                             f"(code prefetch: {prefetch_stats(pod)})")
        time.sleep(0.005)
    if prepared is not None:
        prepared.update(after_last_create_s=round(time.perf_counter() - t0, 3),
                        images=len({fn.code_sha256_hex for fn in fns}))
    return fns


def warm_path(pod: BenchPod, echo_url: str, echo_uvloop_url: str, plan: Plan) -> dict[str, Any]:
    """The controller against the bare aiohttp echo (default asyncio loop: the baseline), with the
    same echo on uvloop alongside for reference, run for run interleaved."""
    url = pod.controller_url
    warm = pod.create_function("bwarm", "python3", {"index.py": PY_TRIVIAL}, quota=plan.warm_quota)
    # A function may get several requests at once under round-robin load: its quota keeps it in one sandbox.
    many = create_many(pod, "bmany", "python3", plan.many_functions, quota=plan.many_quota)
    for fn in [warm, *many]:
        pod.invoke(fn)
    # Warm every sandbox c=64 needs (ceil(64 / quota)) before measuring.
    _wrk(url, [warm.path], 64, plan)
    echo1, echo1_uv, ctl1, echo64, echo64_uv, ctl64, many64 = [], [], [], [], [], [], []
    for _ in range(plan.reps):
        echo1.append(_wrk(echo_url, ["/echo"], 1, plan))
        echo1_uv.append(_wrk(echo_uvloop_url, ["/echo"], 1, plan))
        ctl1.append(_wrk(url, [warm.path], 1, plan))
        echo64.append(_wrk(echo_url, ["/echo"], 64, plan))
        echo64_uv.append(_wrk(echo_uvloop_url, ["/echo"], 64, plan))
        ctl64.append(_wrk(url, [warm.path], 64, plan))
        many64.append(_wrk(url, [fn.path for fn in many], 64, plan))
    c1 = {"p50_ms": _med(ctl1, "p50_ms"), "p99_ms": _med(ctl1, "p99_ms"), "rps": _med(ctl1, "rps"),
          "echo_p50_ms": _med(echo1, "p50_ms"), "echo_p99_ms": _med(echo1, "p99_ms"),
          "echo_uvloop_p50_ms": _med(echo1_uv, "p50_ms")}
    c1["ratio_p50"] = ratio(c1["p50_ms"], c1["echo_p50_ms"])
    c1["ratio_p99"] = ratio(c1["p99_ms"], c1["echo_p99_ms"])
    c1["ratio_p50_uvloop"] = ratio(c1["p50_ms"], c1["echo_uvloop_p50_ms"])
    c64 = {"rps": _med(ctl64, "rps"), "p50_ms": _med(ctl64, "p50_ms"), "p99_ms": _med(ctl64, "p99_ms"),
           "echo_rps": _med(echo64, "rps"), "echo_p50_ms": _med(echo64, "p50_ms"),
           "echo_p99_ms": _med(echo64, "p99_ms"), "echo_uvloop_rps": _med(echo64_uv, "rps"),
           "sandboxes": -(-64 // plan.warm_quota)}
    c64["ratio_rps"] = ratio(c64["rps"], c64["echo_rps"])
    c64["ratio_rps_uvloop"] = ratio(c64["rps"], c64["echo_uvloop_rps"])
    m = {"functions": len(many), "rps": _med(many64, "rps"), "p50_ms": _med(many64, "p50_ms"),
         "p99_ms": _med(many64, "p99_ms"), "one_function_rps": c64["rps"]}
    m["ratio_vs_one"] = ratio(m["rps"], m["one_function_rps"])
    m["ratio_vs_echo"] = ratio(m["rps"], c64["echo_rps"])
    runs = {"echo_c1": [r.to_dict() for r in echo1], "echo_uvloop_c1": [r.to_dict() for r in echo1_uv],
            "echo_uvloop_c64": [r.to_dict() for r in echo64_uv], "controller_c1": [r.to_dict() for r in ctl1],
            "echo_c64": [r.to_dict() for r in echo64], "controller_c64": [r.to_dict() for r in ctl64],
            "many_c64": [r.to_dict() for r in many64]}
    return {"c1": c1, "c64": c64, "many": m, "runs": runs, "wrk_seconds": plan.wrk_seconds, "reps": plan.reps}


def _timed_invoke(client: RawHTTPClient, fn: Function) -> float:
    request = client.build("POST", fn.path, PAYLOAD, {**HEADERS, "Content-Type": "application/json"})
    t0 = time.perf_counter()
    status, body = client.send(request)
    elapsed = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise BenchError(f"cold start of {fn.name}: HTTP {status}: {body[:300]!r}")
    return elapsed


def cold_starts(pod: BenchPod, runtime: str, count: int, prefix: str, *, own_code: bool = True) -> dict[str, Any]:
    """``count`` functions created first, then each invoked once, one after the other, ``COLD_GAP``
    apart: each cold start meets a free pool sandbox in the state the pool keeps idle ones in
    (back-to-back bursts are what :func:`cold_start_rate` measures).

    With ``own_code`` (the default) every function has code of its own (its own code image, built
    by the pod when the function is created); without it they all share one code image.
    """
    prepared: dict[str, Any] = {}
    fns = create_many(pod, prefix, runtime, count, own_code=own_code, prepared=prepared)
    free_before = free_slots(pod)
    times = []
    with RawHTTPClient(pod.config.host, pod.config.controller_port) as client:
        for fn in fns:
            time.sleep(COLD_GAP)
            times.append(_timed_invoke(client, fn))
    return {**summary(times), "runtime": runtime, "own_code": own_code, "free_sandboxes_before": free_before,
            "evictions": max(0, count - free_before), "samples_ms": [round(t, 3) for t in times],
            "code_prefetch": prepared}


def cold_start_rate(pod: BenchPod, count: int, clients: int, prefix: str = "brate") -> dict[str, Any]:
    """Distinct Python functions (each with code of its own) cold-started back to back by ``clients``
    concurrent clients."""
    prepared: dict[str, Any] = {}
    fns = create_many(pod, prefix, "python3", count, own_code=True, prepared=prepared)
    free_before = free_slots(pod)
    lock = threading.Lock()
    queue = list(reversed(fns))
    times: list[float] = []
    errors: list[BaseException] = []

    def client_loop() -> None:
        with RawHTTPClient(pod.config.host, pod.config.controller_port) as client:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    fn = queue.pop()
                try:
                    elapsed = _timed_invoke(client, fn)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    times.append(elapsed)

    threads = [threading.Thread(target=client_loop, name=f"bench-cold-{i}") for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"per_s": round(count / elapsed, 1), "functions": count, "clients": clients,
            "seconds": round(elapsed, 3), "latency": summary(times), "free_sandboxes_before": free_before,
            "evictions": max(0, count - free_before), "code_prefetch": prepared}


def fill_warm(pod: BenchPod, python_warm: int, target: int, prefix: str = "bfill") -> int:
    """Cold-start more Python functions until ``target`` warm Python sandboxes exist; how many it added."""
    missing = max(0, target - python_warm)
    for fn in create_many(pod, prefix, "python3", missing):
        pod.invoke(fn)
    return missing
