"""The funclet's Prometheus metrics, its readiness, and the loopback listener Prometheus scrapes.

The funclet's API is a unix socket only root and the controller reach; ``GET /metrics`` is served
there and, with ``--metrics-port``, by a second application on 127.0.0.1 that has nothing but
``/metrics``, ``/healthz`` and ``/readyz`` (the privileged API never listens on TCP).

Read at scrape time from the pool: sandboxes by state, code images mounted, the pool's counts (OOM
kills, code images built). ``faas_mem_usage_bytes`` is the sandbox cgroup's peak memory
(``memory.max_usage_in_bytes`` on cgroup v1, ``memory.peak`` on v2), read once when the
controller releases a sandbox (cooldown or reborn): one file read per release, nothing per
invocation. The cgroup's peak covers the sandbox since it was built, so after an eviction it may
include the previous function's use.
"""

from __future__ import annotations

from typing import Any, Iterator

from aiohttp import web

from easyfaas.brn import function_of
from easyfaas.metrics import (MAX_SERIES, MEMORY_BUCKETS, OVERFLOW, Buckets, Collector, CollectorRegistry,
                              CounterMetricFamily, GaugeMetricFamily, Metric, add_observability_routes,
                              histogram_family)
from easyfaas.models import SandboxState
from funclet.pool import SandboxPool

__all__ = ["FUNCLET_METRICS", "FuncletMetrics", "funclet_ready", "metrics_app"]

_SERVING = (SandboxState.COLD, SandboxState.WARMUP, SandboxState.WARM)


class FuncletMetrics(Collector):
    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool
        self.memory: dict[str, Buckets] = {}

    def released(self, container_id: str) -> None:
        """A sandbox is about to be reset: its function's peak memory is sampled."""
        try:
            sb = self.pool.get(container_id)
        except Exception:  # noqa: BLE001 - an unknown id is the API's to refuse, not ours
            return
        if sb.cgroup is None or not sb.function_brn:
            return
        try:
            peak = sb.cgroup.memory_peak()
        except (OSError, ValueError):
            return
        name = function_of(sb.function_brn)[1]
        buckets = self.memory.get(name)
        if buckets is None:
            if len(self.memory) >= MAX_SERIES:
                name = OVERFLOW
            buckets = self.memory.setdefault(name, Buckets(MEMORY_BUCKETS))
        buckets.observe(float(peak))

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        states: dict[str, int] = {s.value: 0 for s in SandboxState}
        for sb in pool.sandboxes():
            states[sb.state.value] += 1
        family = GaugeMetricFamily("easyfaas_funclet_sandboxes", "The funclet's sandboxes by state", labels=["state"])
        for state, count in states.items():
            family.add_metric([state], count)
        yield family
        yield GaugeMetricFamily("easyfaas_code_images", "Code images built and mounted", value=pool.code_images)
        yield CounterMetricFamily("easyfaas_code_images_built", "Code images built since start",
                                  value=pool.counters["code_image_built"])
        yield CounterMetricFamily("easyfaas_oom_kills", "Runtimes the kernel killed at their memory limit",
                                  value=pool.counters["oom_kill"])
        yield histogram_family("faas_mem_usage_bytes", "Peak memory of a sandbox's function, sampled when the "
                               "sandbox is released", ["function"],
                               (([name], b) for name, b in sorted(self.memory.items())))


FUNCLET_METRICS = web.AppKey("funclet_metrics", FuncletMetrics)


async def funclet_ready(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """Ready once the pool has built its sandboxes (at least one can be warmed)."""
    sandboxes = app[FUNCLET_METRICS].pool.sandboxes()
    built = sum(1 for sb in sandboxes if sb.state in _SERVING)
    return built > 0, {"sandboxes": len(sandboxes), "built": built}


def metrics_app(registry: CollectorRegistry, metrics: FuncletMetrics) -> web.Application:
    """The loopback listener's application: /metrics, /healthz and /readyz only."""
    app = web.Application()
    app[FUNCLET_METRICS] = metrics
    add_observability_routes(app, registry, ready=funclet_ready, healthz_route=True)
    return app
