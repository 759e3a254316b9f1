"""The controller's Prometheus metrics: invocations as the invoke pipeline counts them, and the
pool, code prefetcher and asynchronous queue as they are when scraped.

:meth:`ControllerMetrics.invoked` is the whole per-request cost: a dict lookup by function and a
few additions into plain numbers (no prometheus-client object, lock or label lookup on the request
path). Everything else — sandboxes by phase, waiters per function, the pool's event counters, the
queue — is read from its owner's state by :meth:`ControllerMetrics.collect` at scrape time.

Names (OpenTelemetry FaaS semantic conventions, Prometheus form): ``faas_invocations_total``
(``result`` = success, error, timeout), ``faas_errors_total`` (errors and timeouts),
``faas_timeouts_total``, ``faas_coldstarts_total``, ``faas_invoke_duration_seconds`` and
``faas_init_duration_seconds`` (the conventions' buckets), all by ``function``, ``version`` and
``trigger`` (the conventions' ``faas.trigger``: http, pubsub, timer, datasource, other). The
platform's own are ``easyfaas_*``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Protocol

from controller.pool.records import Phase
from easyfaas.metrics import (MAX_SERIES, OVERFLOW, Buckets, Collector, CollectorRegistry, CounterMetricFamily,
                              GaugeMetricFamily, Metric, Tally, histogram_family)

if TYPE_CHECKING:
    from controller.code_prefetch import CodePrefetcher
    from controller.pool import Pool

__all__ = ["ControllerMetrics", "QueueDepthSource", "RESULT_ERROR", "RESULT_SUCCESS", "RESULT_TIMEOUT"]

RESULT_SUCCESS = "success"
RESULT_ERROR = "error"
RESULT_TIMEOUT = "timeout"

_LABELS = ["function", "version", "trigger"]


class QueueDepthView(Protocol):
    """What :meth:`EventQueue.depth` answers (controller/event_queue/interface.py's QueueDepth)."""

    total: int
    functions: dict[str, Any]  # unqualified BRN → FunctionDepth (queued, oldest_age)


QueueDepthSource = Callable[[], Awaitable[QueueDepthView]]


class _FunctionStats:
    """One (function, version, trigger)'s counts."""

    __slots__ = ("success", "error", "timeout", "coldstarts", "duration", "init")

    def __init__(self) -> None:
        self.success = 0
        self.error = 0
        self.timeout = 0
        self.coldstarts = 0
        self.duration = Buckets()
        self.init = Buckets()


class ControllerMetrics(Collector):
    """The controller's collector; registered in the service's registry by :meth:`register`."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str, str], _FunctionStats] = {}
        self.throttles = Tally()     # by function, version
        self.rejected = Tally()      # platform errors by code
        self.pool: Pool | None = None
        self.prefetcher: CodePrefetcher | None = None
        self._queue_depth: QueueDepthSource | None = None
        self._queue_in_flight: Callable[[], int] | None = None
        self._depth: QueueDepthView | None = None
        self.dead_letters = Tally()  # by function

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def watch_pool(self, pool: Pool, prefetcher: CodePrefetcher | None = None) -> None:
        self.pool = pool
        self.prefetcher = prefetcher

    def watch_queue(self, depth: QueueDepthSource, in_flight: Callable[[], int] | None = None) -> None:
        """The asynchronous event queue: its depth and oldest event's age per function are asked
        for before each scrape (:meth:`refresh`), its workers' in-flight count read at it."""
        self._queue_depth = depth
        self._queue_in_flight = in_flight

    def dead_lettered(self, function_brn: str) -> None:
        """The hook the event workers call when they give an event up (dead letter)."""
        self.dead_letters.add((_function_name(function_brn),))

    async def refresh(self) -> None:
        """Before a scrape: what can only be asked asynchronously (the queue's depth)."""
        if self._queue_depth is None:
            return
        try:
            async with asyncio.timeout(2.0):
                self._depth = await self._queue_depth()
        except Exception:  # noqa: BLE001 - a queue that cannot answer leaves its last numbers
            pass

    # ---- the request path ----------------------------------------------------------------------

    def invoked(self, function: str, version: str, trigger: str, result: str, duration_s: float,
                init_s: float | None = None) -> None:
        """One invocation's outcome; ``init_s`` is given for the one that made a cold start."""
        key = (function, version, trigger)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._new_stats(key)
        if result == RESULT_SUCCESS:
            stats.success += 1
        elif result == RESULT_TIMEOUT:
            stats.timeout += 1
        else:
            stats.error += 1
        stats.duration.observe(duration_s)
        if init_s is not None:
            stats.coldstarts += 1
            stats.init.observe(init_s)

    def _new_stats(self, key: tuple[str, str, str]) -> _FunctionStats:
        if len(self._stats) >= MAX_SERIES:
            key = (OVERFLOW, OVERFLOW, key[2])
            stats = self._stats.get(key)
            if stats is not None:
                return stats
        stats = self._stats[key] = _FunctionStats()
        return stats

    def throttled(self, function: str, version: str) -> None:
        self.throttles.add((function, version))

    def reject(self, code: str) -> None:
        self.rejected.add((code,))

    # ---- scrape time ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        stats = sorted(self._stats.items())
        invocations = CounterMetricFamily("faas_invocations", "Invocations by outcome", labels=[*_LABELS, "result"])
        errors = CounterMetricFamily("faas_errors", "Invocations that failed (timeouts included)", labels=_LABELS)
        timeouts = CounterMetricFamily("faas_timeouts", "Invocations cut at the function's timeout", labels=_LABELS)
        coldstarts = CounterMetricFamily("faas_coldstarts", "Invocations that started a runtime", labels=_LABELS)
        for key, s in stats:
            labels = list(key)
            invocations.add_metric([*labels, RESULT_SUCCESS], s.success)
            invocations.add_metric([*labels, RESULT_ERROR], s.error)
            invocations.add_metric([*labels, RESULT_TIMEOUT], s.timeout)
            errors.add_metric(labels, s.error + s.timeout)
            timeouts.add_metric(labels, s.timeout)
            coldstarts.add_metric(labels, s.coldstarts)
        yield from (invocations, errors, timeouts, coldstarts)
        yield histogram_family("faas_invoke_duration_seconds", "Duration of the function's handling of an "
                               "invocation", _LABELS, ((list(k), s.duration) for k, s in stats))
        yield histogram_family("faas_init_duration_seconds", "Cold-start (runtime and function init) duration",
                               _LABELS, ((list(k), s.init) for k, s in stats if s.coldstarts))
        yield self.throttles.family("easyfaas_throttles", "Invocations refused for the function's concurrency or "
                                    "queue limits", ["function", "version"])
        yield self.rejected.family("easyfaas_invoke_rejected", "Invocations the platform refused, by error code",
                                   ["code"])
        if self.pool is not None:
            yield from _pool_families(self.pool)
        if self.prefetcher is not None:
            prefetch = self.prefetcher.stats()
            yield CounterMetricFamily("easyfaas_code_images_prepared", "Code images the prefetcher had built",
                                      value=prefetch["Prepared"])
            yield CounterMetricFamily("easyfaas_code_images_failed", "Code image builds the prefetcher saw fail",
                                      value=prefetch["Failed"])
        if self._queue_depth is not None:
            yield from self._queue_families()

    def _queue_families(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("easyfaas_async_queue_depth", "Asynchronous invocations waiting, by function",
                                  labels=["function"])
        age = GaugeMetricFamily("easyfaas_async_queue_oldest_age_seconds",
                                "How long the oldest waiting asynchronous invocation has waited, by function",
                                labels=["function"])
        if self._depth is not None:
            queued: dict[str, int] = {}
            oldest: dict[str, float] = {}
            for brn, d in self._depth.functions.items():
                name = _function_name(brn)
                queued[name] = queued.get(name, 0) + d.queued
                oldest[name] = max(oldest.get(name, 0.0), d.oldest_age)
            for name in sorted(queued):
                depth.add_metric([name], queued[name])
                age.add_metric([name], oldest[name])
        yield depth
        yield age
        if self._queue_in_flight is not None:
            yield GaugeMetricFamily("easyfaas_async_in_flight", "Asynchronous invocations running",
                                    value=self._queue_in_flight())
        yield self.dead_letters.family("easyfaas_async_dead_letters", "Asynchronous invocations given up on",
                                       ["function"])


def _pool_families(pool: Pool) -> Iterator[Metric]:
    machine = pool.machine
    by_phase: dict[str, int] = {}
    in_flight = 0
    for sandbox in pool.sandboxes.values():
        by_phase[sandbox.phase.value] = by_phase.get(sandbox.phase.value, 0) + 1
        in_flight += sandbox.in_flight
    phases = GaugeMetricFamily("easyfaas_pool_sandboxes", "The pool's sandboxes by phase", labels=["phase"])
    for phase in Phase:
        phases.add_metric([phase.value], by_phase.get(phase.value, 0))
    yield phases
    yield GaugeMetricFamily("easyfaas_pool_in_flight", "Invocations running in the pool's sandboxes",
                            value=in_flight)
    waiters = GaugeMetricFamily("easyfaas_pool_waiters", "Requests waiting for a sandbox, by function",
                                labels=["function"])
    by_function: dict[str, int] = {}
    for group in machine.waiting.values():
        if group.waiters:
            name = _function_name(group.brn)
            by_function[name] = by_function.get(name, 0) + len(group.waiters)
    for name, count in sorted(by_function.items()):
        waiters.add_metric([name], count)
    yield waiters
    counters: dict[str, Any] = pool.counters
    events = CounterMetricFamily("easyfaas_pool_events", "The pool's state changes and outcomes, by event",
                                 labels=["event"])
    for name in sorted(counters):
        events.add_metric([name], counters[name])
    yield events
    yield CounterMetricFamily("easyfaas_oom_kills", "Runtimes killed at their memory limit",
                              value=counters.get("oom_kill", 0))
    yield GaugeMetricFamily("easyfaas_pool_ready", "1 once the pool knows the funclet's sandboxes",
                            value=1 if pool.ready.is_set() else 0)


def _function_name(brn: str) -> str:
    parts = brn.split(":")
    return parts[6] if len(parts) >= 7 else brn
