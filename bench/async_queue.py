"""Asynchronous invocations on the SQLite queue, beside warm sync throughput in the same run.

* ``sync_rps``: warm synchronous throughput of a trivial Python function at c=64;
* ``accepted_rps``: ``X-easyfaas-Invoke-Type: event`` enqueues answered 202 at c=64 (each waits
  for its group commit's fsync), with their p50/p99 latency, and p50 at c=1 (the bench pod's
  per-function bound is 100,000 queued events, so the run measures the queue, not the bound);
* ``drain_rps``: events run per second from the backlog left when the enqueue run ends (the
  workers run while the enqueue runs too, so a small backlog means the drain kept up);
* the ratios the README quotes: accepted/sync and drain/sync.
"""

from __future__ import annotations

import time
from typing import Any

from bench.pod import BenchError, BenchPod
from bench.stats import ratio
from bench.wrk import run_wrk
from easyfaas.http import INVOKE_TYPE
from easyfaas.function_code import ACCOUNT

PY_TRIVIAL = "def handler(event, context):\n    return event\n"
HEADERS = {"X-easyfaas-Account-Id": ACCOUNT}
EVENT_HEADERS = {**HEADERS, INVOKE_TYPE: "event"}


def _queued(pod: BenchPod) -> int:
    return int(pod.get_json("controller", "/v1/event-queue")["Total"])


def _wait_empty(pod: BenchPod, timeout: float) -> float:
    """Seconds until the queue is empty."""
    started = time.monotonic()
    while _queued(pod) > 0:
        if time.monotonic() - started > timeout:
            raise BenchError(f"the event queue did not drain in {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


def async_queue(pod: BenchPod, seconds: float, quota: int = 32) -> dict[str, Any]:
    fn = pod.create_function("basync", "python3", {"index.py": PY_TRIVIAL}, quota=quota)
    pod.invoke(fn)
    url = pod.controller_url
    sync = run_wrk(url, [fn.path], connections=64, seconds=seconds, headers=HEADERS)
    single = run_wrk(url, [fn.path], connections=1, seconds=seconds, headers=EVENT_HEADERS)
    _wait_empty(pod, 120)
    accepted = run_wrk(url, [fn.path], connections=64, seconds=seconds, headers=EVENT_HEADERS)
    backlog = _queued(pod)
    drain_s = _wait_empty(pod, 600)
    if sync.errors:
        raise BenchError(f"{sync.errors} errors in the sync run")
    # Non-2xx enqueues are 429s once the backlog reaches --event-queue-length: back-pressure, not
    # failures; only the 202s count as accepted.
    accepted_rps = (accepted.requests - accepted.errors) / accepted.seconds if accepted.seconds else 0.0
    drain_rps = backlog / drain_s if backlog and drain_s > 0 else accepted_rps
    return {"sync_rps": round(sync.rps, 1), "accepted_rps": round(accepted_rps, 1), "refused": accepted.errors,
            "enqueue_p50_ms": accepted.p50_ms, "enqueue_p99_ms": accepted.p99_ms,
            "enqueue_c1_p50_ms": single.p50_ms, "backlog_at_end": backlog, "drain_s": round(drain_s, 2),
            "drain_rps": round(drain_rps, 1), "accepted_vs_sync": ratio(accepted_rps, sync.rps),
            "drain_vs_sync": ratio(drain_rps, sync.rps)}
