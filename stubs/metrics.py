"""The registry's Prometheus metrics and readiness.

Requests are counted by route (its pattern, so the label values are bounded), method and status
class, by one middleware; ready means the function store's directory can be read.
"""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable, Iterator

from aiohttp import web

from easyfaas.metrics import Collector, Metric, Tally, add_observability_routes, new_registry
from stubs.store import FunctionStore

__all__ = ["StubsMetrics", "add_stubs_observability"]

STUBS_METRICS = web.AppKey("stubs_metrics", object)
STORE = web.AppKey("stubs_store", FunctionStore)


class StubsMetrics(Collector):
    def __init__(self) -> None:
        self.requests = Tally()

    def collect(self) -> Iterator[Metric]:
        yield self.requests.family("easyfaas_registry_requests", "Requests the function registry answered",
                                   ["route", "method", "status"])


def _middleware(metrics: StubsMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.requests.add((route, request.method, f"{response.status // 100}xx"))
        return response

    return count


async def _ready(app: web.Application) -> tuple[bool, dict[str, Any]]:
    root = app[STORE].root
    readable = root.is_dir() and os.access(root, os.R_OK | os.X_OK)
    return readable, {"store": str(root), "readable": readable}


def add_stubs_observability(app: web.Application, store: FunctionStore) -> None:
    """/metrics and /readyz on the registry's application (before it starts)."""
    metrics = StubsMetrics()
    registry = new_registry()
    registry.register(metrics)
    app[STORE] = store
    # Outermost, so that it counts the answers the error middleware makes of errors too.
    app.middlewares.insert(0, _middleware(metrics))
    add_observability_routes(app, registry, ready=_ready)
