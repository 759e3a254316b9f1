"""``python -m bench [--smoke] [--out FILE] [--controller-loop L] [--profile]``: run every benchmark, print the
table, write the figures as JSON. Needs root (real sandboxes) and wrk."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from bench import (async_queue, baselines, event_sources, footprint, gateway, observability, provided, report,
                   scenarios, standby)
from bench.pod import BenchPod
from bench.profile import find_py_spy, profile_pid
from bench.wrk import WrkError, run_wrk, wrk_binary

DEFAULT_OUT = "build/bench-results.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny counts and 1 s runs (CI): checks that it all works")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"JSON file of the figures (default {DEFAULT_OUT})")
    p.add_argument("--controller-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="the controller's --event-loop (default auto: uvloop when installed)")
    p.add_argument("--profile", action="store_true", help="also profile the controller under c=64 with py-spy")
    p.add_argument("--py-spy", default=None, help="path of the py-spy binary (default: from PATH)")
    return p.parse_args(argv)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = scenarios.Plan.smoke() if args.smoke else scenarios.Plan.full()
    results: dict[str, Any] = {"plan": asdict(plan), "machine": machine(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _log(f"{plan.name} run: baselines (bare interpreters, {plan.interpreter_runs} starts each)")
    results["baselines"] = {"interpreters": baselines.interpreters(plan.interpreter_runs)}
    results["node_standby"] = standby.node_standby(max(3, plan.interpreter_runs // 2))
    with baselines.echo_server() as (echo_url, echo_pid), \
            baselines.echo_server(uvloop=True) as (echo_uvloop_url, _):
        results["baselines"]["echo_rss_mib"] = baselines.process_rss_mib(echo_pid)
        _log(f"starting a pod with {plan.sandboxes} sandboxes")
        pod = BenchPod(plan.sandboxes, controller_loop=args.controller_loop)
        t0 = time.monotonic()
        pod.start()
        results["pod_start_s"] = round(time.monotonic() - t0, 2)
        results["controller_loop"] = _event_loop_of(pod.daemon_pids()["controller"])
        try:
            fp: dict[str, Any] = {"control_plane_idle": footprint.control_plane(pod)}
            _log(f"warm path: {plan.reps} × (echo, echo on uvloop and controller at c=1 and c=64, "
                 f"{plan.many_functions} functions c=64), {plan.wrk_seconds:g} s each")
            results["warm"] = scenarios.warm_path(pod, echo_url, echo_uvloop_url, plan)
            results["observability"] = observability.observability(pod, plan)
            if args.profile:
                results["profile"] = _profile(pod, args, plan)
            _log(f"cold starts: {plan.cold_python} Python, {plan.cold_python_shared} Python sharing one code "
                 f"image, {plan.cold_node} Node.js")
            results["cold_python"] = scenarios.cold_starts(pod, "python3", plan.cold_python, "bcoldpy")
            results["cold_python_shared"] = scenarios.cold_starts(pod, "python3", plan.cold_python_shared,
                                                                  "bcoldsh", own_code=False)
            results["cold_node"] = scenarios.cold_starts(pod, "nodejs", plan.cold_node, "bcoldjs")
            results["provided"] = provided.provided_vs_native(pod, plan)
            _log(f"cold-start rate: {plan.rate_functions} functions, {plan.rate_clients} clients")
            results["cold_rate"] = scenarios.cold_start_rate(pod, plan.rate_functions, plan.rate_clients)
            python_warm = sum(1 for s in footprint.warm_sandboxes(pod) if s.language == "python")
            added = scenarios.fill_warm(pod, python_warm, plan.footprint_python)
            _log(f"footprint of {python_warm + added} warm Python sandboxes ({added} more warmed for it)")
            sandboxes = footprint.warm_sandboxes(pod)
            fp["python"] = footprint.summarize(sandboxes, "python")
            fp["node"] = footprint.summarize(sandboxes, "node")
            fp["control_plane_loaded"] = footprint.control_plane(pod)
            fp["fit_24gib"] = footprint.fit_in(24 << 30, fp["control_plane_idle"]["total_mib"], fp["python"])
            results["footprint"] = fp
            results["event_sources"] = event_sources.event_sources(pod, *((20, 2) if args.smoke else (500, 20)),
                                                                   sync_seconds=1.0,
                                                                   sync_pairs=1 if args.smoke else 40)
            # These two restart the controller: last.
            _log("asynchronous invocations: enqueue and drain capacities, and both at once")
            results["async_queue"] = async_queue.async_queue(pod, plan.wrk_seconds)
            results["gateway"] = gateway.gateway_vs_direct(pod, plan)
        finally:
            _log("stopping the pod")
            results["leaks"] = pod.stop()
        if "footprint" in results:
            _log(f"footprint of the all-in-one form: a pod of {plan.sandboxes} sandboxes, idle")
            fp["control_plane_idle_all_in_one"], leaks = footprint.all_in_one_idle(plan.sandboxes,
                                                                                   args.controller_loop)
            results["leaks"] += leaks
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def _profile(pod: BenchPod, args: argparse.Namespace, plan: scenarios.Plan) -> dict[str, Any]:
    py_spy = find_py_spy(args.py_spy)
    if py_spy is None:
        return {"error": "py-spy not found (pip install py-spy, or --py-spy PATH)"}
    slot = next(s for s in pod.get_json("controller", "/v1/runtimes") if ":bwarm:" in s.get("FunctionBrn", ""))
    warm = scenarios.Function("bwarm", "python3", slot["FunctionBrn"])
    _log("profiling the controller under c=64 with py-spy")
    seconds = max(3.0, plan.wrk_seconds)
    return profile_pid(py_spy, pod.daemon_pids()["controller"], seconds,
                       lambda: run_wrk(pod.controller_url, [warm.path], connections=64, seconds=seconds,
                                       headers=scenarios.HEADERS).to_dict())


def _event_loop_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "uvloop" if "uvloop" in f.read() else "asyncio"
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench needs root: sandboxes are built from cgroups, namespaces and mounts", file=sys.stderr)
        return 2
    try:
        wrk_binary()
    except WrkError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    started = time.monotonic()
    results = run(args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    table = report.rows(results)
    results["budget"] = report.budget(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report.markdown(table))
    load = results["machine"]
    print(f"\n{load['cpus']} CPUs, load average {load['loadavg_start'][0]} → {load['loadavg_end'][0]}; "
          f"controller on {results['controller_loop']}, --log-level warning; "
          f"{results['elapsed_s']:g} s; figures in {out}")
    if results["leaks"]:
        print(f"the pod left kernel objects behind: {results['leaks']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
