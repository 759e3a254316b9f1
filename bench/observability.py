"""What metrics and kept function logs cost the warm path: c=64 throughput with them on and off.

One warm Python function that prints a line per invocation (so that every request has log lines
to keep) is driven at c=64, alternately with the controller started ``--metrics on
--function-logs on`` (the default) and ``--metrics off --function-logs off``; the controller is
restarted between the two (the funclet and its sandboxes stay), and every sandbox c=64 needs is
warmed before each measured run. Runs alternate so that both settings see the same machine; the
figure is the ratio of the medians, on/off (the target is at least 0.95). The cost per request is
measured as the controller process's CPU time per request in each setting (less sensitive to a
busy machine than throughput), and their difference.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from bench.pod import BenchError, BenchPod
from bench.scenarios import Plan, _med, _wrk

PY_PRINTS = "def handler(event, context):\n    print('handled', event)\n    return event\n"
_SWITCHES = ("--metrics", "--function-logs")


def _restart_controller(pod: BenchPod, on: bool, timeout: float = 60.0) -> None:
    config = pod.config
    args = list(config.controller_args)
    for switch in _SWITCHES:
        while switch in args:
            i = args.index(switch)
            del args[i:i + 2]
        args += [switch, "on" if on else "off"]
    config.controller_args = args
    assert pod.pod is not None
    pod.pod.restart("controller")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = pod.request("controller", "GET", "/readyz")
        except (OSError, BenchError):
            status = 0
        if status == 200:
            return
        time.sleep(0.2)
    raise BenchError(f"the controller was not ready {timeout:g} s after its restart")


def observability(pod: BenchPod, plan: Plan) -> dict[str, Any]:
    fn = pod.create_function("bobserve", "python3", {"index.py": PY_PRINTS}, quota=plan.warm_quota)
    url = pod.controller_url
    runs: dict[str, list[Any]] = {"on": [], "off": []}
    cpu_us: dict[str, list[float]] = {"on": [], "off": []}
    mode = "on"
    try:
        for rep in range(plan.reps):
            for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):
                _restart_controller(pod, mode == "on")
                pod.invoke(fn)
                _wrk(url, [fn.path], 64, plan)  # warms every sandbox c=64 needs
                controller = psutil.Process(pod.daemon_pids()["controller"])
                before = sum(controller.cpu_times()[:2])
                result = _wrk(url, [fn.path], 64, plan)
                used = sum(controller.cpu_times()[:2]) - before
                runs[mode].append(result)
                cpu_us[mode].append(used / max(1, result.requests) * 1e6)
    finally:
        if mode == "off":  # the scenarios after this one measure the default
            _restart_controller(pod, True)
    on_rps, off_rps = _med(runs["on"], "rps"), _med(runs["off"], "rps")
    cpu_on, cpu_off = sorted(cpu_us["on"])[len(cpu_us["on"]) // 2], sorted(cpu_us["off"])[len(cpu_us["off"]) // 2]
    return {"rps_on": on_rps, "rps_off": off_rps, "ratio": round(on_rps / off_rps, 3) if off_rps else 0.0,
            "p50_ms_on": _med(runs["on"], "p50_ms"), "p50_ms_off": _med(runs["off"], "p50_ms"),
            "controller_cpu_us_per_request_on": round(cpu_on, 1),
            "controller_cpu_us_per_request_off": round(cpu_off, 1),
            "cost_per_request_us": round(cpu_on - cpu_off, 1),
            "runs": {mode: [r.to_dict() for r in rs] for mode, rs in runs.items()}}
