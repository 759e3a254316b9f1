"""Asynchronous invocations on the SQLite queue, beside warm sync throughput in the same run.

* ``sync_rps``: warm synchronous throughput of a trivial Python function at c=64;
* ``mixed``: ``X-easyfaas-Invoke-Type: event`` enqueues at c=64 with the workers draining at the
  same time (the steady state of a busy pod: every event is both taken in and run, so this is
  about half of either capacity), with the events finished per second over the whole run;
* ``accepted_rps``: the enqueue's own capacity: enqueues answered 202 at c=64 (each waits for its
  group commit's fsync) while the controller runs with ``--event-workers 1``, so that the drain
  does not take the CPU; with their p50/p99 latency, and p50 at c=1;
* ``drain_rps``: the drain's own capacity: the backlog that run left, run by a controller restarted
  with the default workers, from its readiness (``/readyz``) to an empty queue (the queue is durable, so the
  backlog is still there after the restart, as after any restart of a busy pod);
* the ratios the README quotes: accepted/sync and drain/sync.

The bench pod's per-function bound is 100,000 queued events (bench/pod.py), so the runs measure
the queue, not the back-pressure bound.
"""

from __future__ import annotations

import time
from typing import Any

from bench.pod import BenchError, BenchPod
from bench.stats import ratio
from bench.wrk import WrkResult, run_wrk
from easyfaas.function_code import ACCOUNT
from easyfaas.http import INVOKE_TYPE

PY_TRIVIAL = "def handler(event, context):\n    return event\n"
HEADERS = {"X-easyfaas-Account-Id": ACCOUNT}
EVENT_HEADERS = {**HEADERS, INVOKE_TYPE: "event"}
ONE_WORKER = ["--event-workers", "1"]


def _queued(pod: BenchPod) -> int:
    return int(pod.get_json("controller", "/v1/event-queue")["Total"])


def _wait_empty(pod: BenchPod, timeout: float) -> float:
    """Seconds until the queue is empty."""
    started = time.monotonic()
    while _queued(pod) > 0:
        if time.monotonic() - started > timeout:
            raise BenchError(f"the event queue did not drain in {timeout:g} s")
        time.sleep(0.2)  # each look counts the queue in SQL; looking more often slows the drain
    return time.monotonic() - started


def _wait_ready(pod: BenchPod, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pod.request("controller", "GET", "/readyz")[0] != 200:
        if time.monotonic() > deadline:
            raise BenchError(f"the restarted controller was not ready in {timeout:g} s")
        time.sleep(0.01)


def _accepted(run: WrkResult) -> int:
    # Non-2xx enqueues would be 429s (back-pressure), not failures: only the 202s count.
    return run.requests - run.errors


def _restart_controller(pod: BenchPod, extra: list[str]) -> None:
    """Restart the controller (SIGTERM: leased events go back to the queue) with ``extra`` options."""
    args = pod.pod.config.controller_args
    for option in ONE_WORKER:
        while option in args:
            args.remove(option)
    args.extend(extra)
    pod.pod.restart("controller")


def async_queue(pod: BenchPod, seconds: float, quota: int = 32) -> dict[str, Any]:
    fn = pod.create_function("basync", "python3", {"index.py": PY_TRIVIAL}, quota=quota)
    pod.invoke(fn)
    url = pod.controller_url
    sync = run_wrk(url, [fn.path], connections=64, seconds=seconds, headers=HEADERS)
    if sync.errors:
        raise BenchError(f"{sync.errors} errors in the sync run")
    single = run_wrk(url, [fn.path], connections=1, seconds=seconds, headers=EVENT_HEADERS)
    _wait_empty(pod, 120)

    mixed = run_wrk(url, [fn.path], connections=64, seconds=seconds, headers=EVENT_HEADERS)
    mixed_tail = _wait_empty(pod, 600)
    mixed_done_rps = _accepted(mixed) / (mixed.seconds + mixed_tail) if mixed.seconds else 0.0

    _restart_controller(pod, ONE_WORKER)
    try:
        pod.invoke(fn)
        accepted = run_wrk(url, [fn.path], connections=64, seconds=seconds, headers=EVENT_HEADERS)
    finally:
        _restart_controller(pod, [])
    # Timed from the restarted controller's readiness on (its pool adopted), with what is left then.
    _wait_ready(pod, 60)
    backlog = _queued(pod)
    drain_s = _wait_empty(pod, 600)
    accepted_rps = _accepted(accepted) / accepted.seconds if accepted.seconds else 0.0
    drain_rps = backlog / drain_s if backlog and drain_s > 0 else 0.0
    return {"sync_rps": round(sync.rps, 1), "accepted_rps": round(accepted_rps, 1), "refused": accepted.errors,
            "enqueue_p50_ms": accepted.p50_ms, "enqueue_p99_ms": accepted.p99_ms,
            "enqueue_c1_p50_ms": single.p50_ms, "backlog": backlog, "drain_s": round(drain_s, 2),
            "drain_rps": round(drain_rps, 1), "accepted_vs_sync": ratio(accepted_rps, sync.rps),
            "drain_vs_sync": ratio(drain_rps, sync.rps),
            "mixed": {"accepted_rps": round(_accepted(mixed) / mixed.seconds, 1) if mixed.seconds else 0.0,
                      "finished_rps": round(mixed_done_rps, 1), "tail_s": round(mixed_tail, 2),
                      "accepted_vs_sync": ratio(_accepted(mixed) / mixed.seconds if mixed.seconds else 0.0,
                                                sync.rps),
                      "finished_vs_sync": ratio(mixed_done_rps, sync.rps)}}
