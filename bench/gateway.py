"""The HTTP gateway's cost: a warm call through a route against a direct invoke of the same function,
run for run interleaved, at c=1 (p50 latency) and c=64 (throughput).

The gateway is the one the controller serves itself (``--gateway-port``); a pod started without it
gets its controller restarted with one. Budget: p50 ≤ 1.3× the direct invoke, throughput ≥ 0.7×.

``python -m bench.gateway [--seconds S] [--reps N]`` runs only this scenario on a pod of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

from bench.pod import ACCOUNT_HEADER, BenchError, BenchPod, run_standalone
from bench.scenarios import Plan, _med, _wrk
from bench.stats import median, ratio
from bench.wrk import WrkResult
from easyfaas.function_code import ACCOUNT
from easyfaas.pod_names import free_port

PY_WEB = "def handler(event, context):\n    return {'statusCode': 200, 'body': 'ok'}\n"
P50_BUDGET = 1.3
RPS_BUDGET = 0.7


def gateway_port(pod: BenchPod) -> int:
    """The controller's gateway port; restarts the controller with one when it has none."""
    assert pod.pod is not None
    args = pod.pod.config.controller_args
    if "--gateway-port" in args:
        return int(args[args.index("--gateway-port") + 1])
    port = free_port()
    args += ["--gateway-port", str(port)]
    pod.pod.restart("controller")
    pod.wait_pool_ready(1, timeout=60.0)
    return port


def _route(pod: BenchPod, name: str, path: str) -> None:
    body = {"Type": "http", "Qualifier": "1", "Config": {"Methods": ["POST"], "Path": path}}
    status, text = pod.request("stubs", "POST", f"/v1/functions/{name}/triggers", json.dumps(body).encode(),
                               {ACCOUNT_HEADER: ACCOUNT, "Content-Type": "application/json"})
    if status != 201:
        raise BenchError(f"creating the route {path}: HTTP {status}: {text[:300]!r}")


def _until_routed(url: str, path: str, timeout: float = 10.0) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("POST", path, body=b'{"n": 1}', headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status == 200 and resp.read() == b"ok":
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise BenchError(f"the gateway did not serve {path} within {timeout:g}s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk_cpu(pod: BenchPod, url: str, paths: list[str], plan: Plan, cpu_us: list[float]) -> WrkResult:
    """A c=64 run, noting the controller's CPU time per request (steadier than req/s on a busy machine)."""
    pid = pod.daemon_pids()["controller"]
    before = _cpu_seconds(pid)
    result = _wrk(url, paths, 64, plan)
    cpu_us.append((_cpu_seconds(pid) - before) / max(1, result.requests) * 1e6)
    return result


def gateway_vs_direct(pod: BenchPod, plan: Plan) -> dict[str, Any]:
    port = gateway_port(pod)
    gateway = f"http://{pod.config.host}:{port}"
    fn = pod.create_function("bgw", "python3", {"index.py": PY_WEB}, quota=plan.warm_quota)
    _route(pod, fn.name, "/bgw/items/{id}")
    route = "/bgw/items/42"
    pod.invoke(fn)
    _until_routed(gateway, route)
    _wrk(pod.controller_url, [fn.path], 64, plan)  # every sandbox c=64 needs, warm
    direct1, gw1, direct64, gw64 = [], [], [], []
    direct_cpu: list[float] = []
    gw_cpu: list[float] = []
    for _ in range(plan.reps):
        direct1.append(_wrk(pod.controller_url, [fn.path], 1, plan))
        gw1.append(_wrk(gateway, [route], 1, plan))
        direct64.append(_wrk_cpu(pod, pod.controller_url, [fn.path], plan, direct_cpu))
        gw64.append(_wrk_cpu(pod, gateway, [route], plan, gw_cpu))
    out: dict[str, Any] = {
        "c1": {"direct_p50_ms": _med(direct1, "p50_ms"), "gateway_p50_ms": _med(gw1, "p50_ms"),
               "direct_p99_ms": _med(direct1, "p99_ms"), "gateway_p99_ms": _med(gw1, "p99_ms")},
        "c64": {"direct_rps": _med(direct64, "rps"), "gateway_rps": _med(gw64, "rps"),
                "direct_p50_ms": _med(direct64, "p50_ms"), "gateway_p50_ms": _med(gw64, "p50_ms"),
                "direct_controller_cpu_us": round(median(direct_cpu), 1),
                "gateway_controller_cpu_us": round(median(gw_cpu), 1)},
    }
    out["ratio_p50"] = ratio(out["c1"]["gateway_p50_ms"], out["c1"]["direct_p50_ms"])
    out["ratio_rps"] = ratio(out["c64"]["gateway_rps"], out["c64"]["direct_rps"])
    out["ratio_controller_cpu"] = ratio(out["c64"]["gateway_controller_cpu_us"], out["c64"]["direct_controller_cpu_us"])
    out["within_budget"] = out["ratio_p50"] <= P50_BUDGET and out["ratio_rps"] >= RPS_BUDGET
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    a = p.parse_args(argv)
    plan = Plan.smoke()
    plan.wrk_seconds, plan.reps = a.seconds, a.reps
    return run_standalone(lambda pod: gateway_vs_direct(pod, plan))


if __name__ == "__main__":
    raise SystemExit(main())
