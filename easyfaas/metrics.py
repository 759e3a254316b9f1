"""What every daemon's ``/metrics``, ``/healthz`` and ``/readyz`` share.

Each service has its own :class:`prometheus_client.CollectorRegistry` (kept under
:data:`METRICS_REGISTRY` on its application; nothing is registered in prometheus-client's global
default registry), with the process collector in it, so the all-in-one form's services each answer
for themselves. Names follow the OpenTelemetry semantic conventions for FaaS mapped to Prometheus
names (``faas.invoke_duration`` → ``faas_invoke_duration_seconds``); what the conventions do not
name is under ``easyfaas_``.

Hot paths count into plain Python objects (:class:`Tally`, :class:`Buckets`); collectors turn them
into metric families when Prometheus scrapes, so a request pays a few integer additions and no
lock, label lookup or formatting.

prometheus-client is loaded without its package's ``__init__`` (which brings its HTTP servers,
push gateway client and metric classes, about 1 MiB of each daemon's resident memory): the
registry and metric-family modules at start, the exposition format at the first scrape. The
services' metric modules import those names from here.
"""

from __future__ import annotations

import bisect
from typing import Any, Awaitable, Callable, Iterable, Iterator

from aiohttp import web

from easyfaas.daemon_imports import package_without_its_exports

package_without_its_exports("prometheus_client")

from prometheus_client.metrics_core import (  # noqa: E402
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.process_collector import ProcessCollector  # noqa: E402
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402

__all__ = ["BEFORE_SCRAPE", "Collector", "CollectorRegistry", "CounterMetricFamily", "GaugeMetricFamily", "Metric",
           "FAAS_BUCKETS", "MAX_SERIES", "MEMORY_BUCKETS", "METRICS_REGISTRY", "OVERFLOW",
           "TRIGGERS", "TRIGGER_HEADER", "Buckets", "ReadinessCheck", "Tally", "TriggerMetrics",
           "add_observability_routes", "histogram_family", "new_registry", "trigger_of"]

#: The conventions' advisory buckets of faas.invoke_duration and faas.init_duration (seconds).
FAAS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Buckets of faas.mem_usage (bytes; the conventions give none): powers of two from 16 MiB to 8 GiB.
MEMORY_BUCKETS = tuple(float(1 << n) for n in range(24, 34))
#: Label sets a family keeps apart; beyond it new ones are counted under :data:`OVERFLOW`.
MAX_SERIES = 2000
OVERFLOW = "_other"

#: The request header a trigger names itself in (the conventions' ``faas.trigger`` values).
TRIGGER_HEADER = "X-easyfaas-Trigger"
TRIGGERS = frozenset({"datasource", "http", "pubsub", "timer", "other"})

METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
READINESS = web.AppKey("readiness", object)
#: What is refreshed before each scrape (what can only be read asynchronously).
BEFORE_SCRAPE = web.AppKey("before_scrape", list)

#: Says whether the service can serve: (ready, details shown in the /readyz answer).
ReadinessCheck = Callable[[web.Application], Awaitable[tuple[bool, dict[str, Any]]]]


def trigger_of(header: str | None) -> str:
    """The ``trigger`` label of an invocation: a known ``faas.trigger`` value, else ``other``."""
    return header if header in TRIGGERS else "other"


def new_registry(*, process: bool = True) -> CollectorRegistry:
    """A registry of one service; with ``process`` the process collector (CPU, memory, fds) in it."""
    registry = CollectorRegistry(auto_describe=False)
    if process:
        ProcessCollector(registry=registry)
    return registry


class Buckets:
    """A histogram as plain numbers: ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = FAAS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


def histogram_family(name: str, documentation: str, labels: list[str],
                     series: Iterable[tuple[list[str], Buckets]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, buckets in series:
        family.add_metric(values, buckets.cumulative(), buckets.sum)
    return family


class Tally:
    """Counters by a bounded label tuple: a dict of ints, at most :data:`MAX_SERIES` keys."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...], n: int = 1) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
        elif len(counts) < MAX_SERIES:
            counts[key] = n
        else:
            over = (OVERFLOW,) * len(key)
            counts[over] = counts.get(over, 0) + n

    def family(self, name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=labels)
        for key, count in sorted(self.counts.items()):
            family.add_metric(list(key), count)
        return family


class TriggerMetrics(Collector):
    """A trigger daemon's firings and errors, by trigger kind and function (the gateway's hook).

    ``fired(kind, function)`` when a trigger invokes a function, ``failed(kind, function)`` when
    the invocation could not be delivered or the function failed.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.firings = Tally()
        self.errors = Tally()
        if registry is not None:
            registry.register(self)

    def fired(self, kind: str, function: str) -> None:
        self.firings.add((kind, function))

    def failed(self, kind: str, function: str) -> None:
        self.errors.add((kind, function))

    def collect(self) -> Iterator[Metric]:
        yield self.firings.family("easyfaas_trigger_firings", "Invocations a trigger made", ["trigger", "function"])
        yield self.errors.family("easyfaas_trigger_errors", "Trigger invocations that failed", ["trigger", "function"])


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


# ---- routes ----------------------------------------------------------------------------------------

async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import exposition  # at the first scrape (see the module's docstring)

    for refresh in request.app.get(BEFORE_SCRAPE, ()):
        await refresh()
    body = exposition.generate_latest(request.app[METRICS_REGISTRY])
    # The text format generate_latest writes, 0.0.4, which every Prometheus reads (newer clients'
    # own default names 1.0.0, the escaping scheme older servers do not know).
    content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _always_ready(_: web.Application) -> tuple[bool, dict[str, Any]]:
    return True, {}


async def readyz(request: web.Request) -> web.Response:
    check: ReadinessCheck = request.app[READINESS]  # type: ignore[assignment]
    ready, details = await check(request.app)
    return web.json_response({"ready": ready, **details}, status=200 if ready else 503)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def add_observability_routes(app: web.Application, registry: CollectorRegistry, *,
                             ready: ReadinessCheck | None = None, healthz_route: bool = False) -> None:
    """``GET /metrics`` (this registry's exposition) and ``GET /readyz`` (``ready``'s answer: 200 or
    503 with a JSON body); ``/healthz`` too when the application has none of its own."""
    app[METRICS_REGISTRY] = registry
    app[READINESS] = ready or _always_ready
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    if healthz_route:
        app.router.add_get("/healthz", healthz)
