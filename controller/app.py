"""The controller daemon: application factory, the lifetimes of its parts, its service and ``main``.

Parts and their order (cleanup runs in reverse): the funclet and registry clients, the code
prefetcher (builds new functions' code images ahead of their first invocation), the slot pool
(which finds the funclet's sandboxes in the background and runs the periodic task), the invoke
pipeline, the asynchronous invocations' queue and workers (controller/async_api.py: the
workers stop taking events at shutdown and drain before the pool goes away), and the event
sources feeding that queue (eventsources/: schedules, MQTT topics). The function log
writer (controller/function_logs.py) is started before all of them and closed after them, so that
what the draining invocations wrote is flushed. ``/metrics``, ``/readyz`` and the logs route are
added by ``_observability``.

Shutdown (SIGTERM, through easyfaas.daemon): the front door stops accepting and lets the
invocations on its connections finish, the pool stops growing and pre-warming, in-flight and queued
requests get up to ``--drain-timeout`` to finish, then the pool and clients are closed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import aiohttp
import structlog
from aiohttp import web

from controller.async_api import EVENT_QUEUE, EVENT_WORKERS, setup_async_invocations
from controller.code_prefetch import CodePrefetcher
from controller.funclet_client import FuncletClient
from controller.handlers import INVOKER, POOL, PREFETCHER, add_routes
from controller.invoke import Invoker
from controller.function_logs import FunctionLogs
from controller.logs_api import FUNCTION_LOGS, add_log_routes
from controller.metrics import ControllerMetrics
from easyfaas.metrics import BEFORE_SCRAPE, TriggerMetrics, add_observability_routes, new_registry
from controller.options import deprecated_options, parse_controller_options
from controller.pool import Pool
from controller.registry import Registry
from easyfaas.config import Settings
from controller.front_door import FrontDoor
from easyfaas.auth import AUTHENTICATOR, Authenticator, auth_middleware, authenticator_of
from easyfaas.keys import PodCredentials
from easyfaas.secret_store import SecretStore
from easyfaas.tls import ServerTLS, client_context, server_tls
from easyfaas.http import error_middleware, request_id_middleware
from easyfaas.daemon import Service, event_loop_name, loop_factory, run_daemon
from easyfaas.heap import freeze_startup_heap
from easyfaas.logging import setup_logging
from easyfaas.openapi import add_openapi_route, checked_invoker
from eventsources.service import EVENT_SOURCES_INTAKE, setup_event_sources
from httptrigger.embedded import gateway_endpoint
from httptrigger.endpoint import gateway_security

log = structlog.get_logger(__name__)

OPTIONS = web.AppKey("options", Settings)
FUNCLET = web.AppKey("funclet", FuncletClient)
REGISTRY = web.AppKey("registry", Registry)

__all__ = ["FUNCLET", "INVOKER", "OPTIONS", "POOL", "REGISTRY", "FrontDoorEndpoint", "controller_service",
           "create_app", "main"]

READY_TIMEOUT = 2.0


def create_app(opts: Settings, *, funclet: FuncletClient | None = None,
               registry: Registry | None = None, authn: Authenticator | None = None) -> web.Application:
    """The controller application; ``funclet`` and ``registry`` may be given (tests), else built from opts.
    With ``authn`` every route but the health check needs a key (the front door checks invocations)."""
    # One byte over the limit so an oversized body is detected by us, with our error, not aiohttp's.
    app = web.Application(middlewares=[request_id_middleware, error_middleware,
                                       *([auth_middleware(authn)] if authn is not None else [])],
                          client_max_size=opts.max_body_size + 1)
    auth_dir = getattr(opts, "auth_dir", "")
    funclet = funclet if funclet is not None else FuncletClient(opts.funclet_api_sock, timeout=opts.funclet_timeout)
    registry = registry if registry is not None else Registry(
        opts.repository_endpoint, opts.repository_version, function_ttl=opts.function_cache_ttl,
        latest_ttl=opts.latest_cache_ttl, runtime_ttl=opts.runtime_config_cache_ttl, timeout=opts.registry_timeout,
        credentials=PodCredentials(auth_dir).headers if auth_dir else None, ssl=client_context(opts))
    for old, new in deprecated_options(opts):
        log.warning("option_deprecated", option=f"--{old}", use=f"--{new}")
    pool = Pool(funclet, runtime_alive_timeout=opts.runtime_alive_timeout, task_interval=opts.task_interval,
                failure_wait=opts.runtime_failure_wait,
                max_runtime_idle=opts.max_runtime_idle, max_transition_time=opts.max_transition_time,
                concurrent_mode=opts.concurrent_mode, queue_length=opts.queue_length,
                queue_timeout=opts.queue_timeout, min_free_sandboxes=opts.min_free_sandboxes,
                max_sandbox_idle=opts.max_sandbox_idle, scale_min_ttl=opts.scale_min_ttl,
                scaling=getattr(opts, "scaling", None), use_events=opts.funclet_events)
    app[OPTIONS] = opts
    app[FUNCLET] = funclet
    app[REGISTRY] = registry
    app[POOL] = pool
    app[INVOKER] = Invoker(registry, pool, max_body_size=opts.max_body_size, simple_auth=opts.enable_simple_auth)
    if auth_dir:
        app[INVOKER].secrets = SecretStore(auth_dir)  # handed to the funclet at each warmup
    if authn is not None:
        app[AUTHENTICATOR] = authn
    app.cleanup_ctx.append(_clients)
    if getattr(opts, "prefetch_code", True):
        app[PREFETCHER] = CodePrefetcher(registry, funclet)
        app.cleanup_ctx.append(_prefetch)
    app.cleanup_ctx.append(_pool)
    # After the pool's context: the event workers drain before the pool closes.
    setup_async_invocations(app, opts, app[INVOKER], registry)
    # After the queue's context: schedules and MQTT subscriptions stop before the queue closes.
    setup_event_sources(app, opts, app[INVOKER], app[EVENT_QUEUE], registry.base)
    app.on_shutdown.append(_begin_drain)
    add_routes(app)
    _observability(app, opts)
    add_openapi_route(app, "controller")
    return app


def _observability(app: web.Application, opts: Settings) -> None:
    """/metrics, /readyz and the kept function logs (their routes, and the writer's lifetime)."""
    invoker = app[INVOKER]
    registry = new_registry()
    if getattr(opts, "metrics", True):
        metrics = ControllerMetrics()
        metrics.watch_pool(app[POOL], app.get(PREFETCHER))
        metrics.register(registry)
        invoker.metrics = metrics
        if EVENT_QUEUE in app:
            workers = app[EVENT_WORKERS]
            metrics.watch_queue(app[EVENT_QUEUE].depth, lambda: workers.in_flight)
            app[BEFORE_SCRAPE] = [metrics.refresh]
        if EVENT_SOURCES_INTAKE in app:
            app[EVENT_SOURCES_INTAKE].metrics = TriggerMetrics(registry)  # schedule and MQTT firings
    add_observability_routes(app, registry, ready=_ready)
    state_dir = getattr(opts, "state_dir", "/var/faas/controller")
    log_dir = getattr(opts, "function_log_dir", "") or f"{state_dir}/function-logs"
    logs = FunctionLogs(log_dir, max_bytes=getattr(opts, "function_log_max_bytes", 16 << 20))
    add_log_routes(app, logs)
    if getattr(opts, "function_logs", True):
        invoker.function_logs = logs
    app.cleanup_ctx.insert(0, _function_logs)  # closed last: after the invocations have drained
    app.on_shutdown.append(_end_log_follows)


async def _function_logs(app: web.Application) -> AsyncIterator[None]:
    await app[FUNCTION_LOGS].start()
    try:
        yield
    finally:
        await app[FUNCTION_LOGS].close()


async def _end_log_follows(app: web.Application) -> None:
    app[FUNCTION_LOGS].end_follows()


async def _ready(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """Ready when the pool knows the funclet's sandboxes and the registry answers."""
    pool_ready = app[POOL].ready.is_set()
    registry_ok = await _registry_reachable(app[OPTIONS].repository_endpoint)
    return pool_ready and registry_ok, {"pool": pool_ready, "registry": registry_ok}


async def _registry_reachable(endpoint: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT)) as session:
            async with session.get(f"{endpoint.rstrip('/')}/healthz") as resp:
                return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False


async def _clients(app: web.Application) -> AsyncIterator[None]:
    await app[REGISTRY].start()
    try:
        yield
    finally:
        await app[REGISTRY].close()
        await app[FUNCLET].close()


async def _prefetch(app: web.Application) -> AsyncIterator[None]:
    await app[PREFETCHER].start()
    try:
        yield
    finally:
        await app[PREFETCHER].close()


async def _pool(app: web.Application) -> AsyncIterator[None]:
    await app[POOL].start()
    try:
        yield
    finally:
        await app[POOL].close()


async def _begin_drain(app: web.Application) -> None:
    log.info("controller_draining", in_flight=sum(s.in_flight for s in app[POOL].sandboxes.values()),
             queued=app[POOL].resource()["Queue"]["Waiting"])
    app[POOL].begin_drain()


@dataclass(frozen=True)
class FrontDoorEndpoint:
    """The controller's listening socket, owned by the front door (controller/front_door.py), which
    hands what is not an invocation to the runner's aiohttp protocol. On shutdown the invocations
    under way on its connections get up to ``drain_timeout`` to finish."""

    host: str
    port: int
    drain_timeout: float
    tls: ServerTLS | None = None  # reloaded on SIGHUP by easyfaas.daemon

    def site(self, runner: web.AppRunner) -> web.BaseSite:
        return _FrontDoorSite(runner, self)

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, **({"tls": True} if self.tls else {})}


class _FrontDoorSite(web.BaseSite):
    def __init__(self, runner: web.AppRunner, endpoint: FrontDoorEndpoint) -> None:
        super().__init__(runner)
        assert runner.server is not None
        self._endpoint = endpoint
        self._door = FrontDoor(checked_invoker(runner.app[INVOKER], "controller"), runner.server,
                               auth=runner.app.get(AUTHENTICATOR),
                               ssl_context=endpoint.tls.context if endpoint.tls else None)

    @property
    def name(self) -> str:
        return f"{'https' if self._endpoint.tls else 'http'}://{self._endpoint.host}:{self._endpoint.port}"

    async def start(self) -> None:
        await super().start()
        await self._door.start(self._endpoint.host, self._endpoint.port)

    async def stop(self) -> None:
        # Requests under way on the front door's connections finish first (their pool is still
        # open); then the runner drains aiohttp's connections and the application's parts close.
        self._door.stop_accepting()
        await self._door.wait_idle(self._endpoint.drain_timeout)
        await super().stop()


async def _freeze_heap_when_ready(app: web.Application) -> AsyncIterator[None]:
    """Freeze the heap once the pool knows its sandboxes (slots are the bulk of what start-up builds)."""
    async def freeze() -> None:
        try:
            await app[POOL].wait_ready(60.0)
        except TimeoutError:
            pass
        log.info("controller_heap_frozen", objects=freeze_startup_heap())

    task = asyncio.get_running_loop().create_task(freeze())
    try:
        yield
    finally:
        task.cancel()


def _admin_only(method: str, path: str) -> bool:
    """The controller's routes about the pool as a whole (not one account's functions): admin keys only."""
    return path in ("/v1/resource", "/metrics") or path.startswith("/v1/runtimes")


def controller_service(opts: Settings) -> Service:
    """The controller as a service of a daemon process: its application behind the front door."""
    authn = authenticator_of(opts, [opts.bind_address], daemon="controller", admin_only=_admin_only)
    app = create_app(opts, authn=authn)
    app.cleanup_ctx.append(_freeze_heap_when_ready)
    tls = server_tls(opts)
    endpoints: list[Any] = [FrontDoorEndpoint(opts.bind_address, opts.port, drain_timeout=opts.drain_timeout, tls=tls)]
    if getattr(opts, "gateway_port", 0):
        endpoints.append(gateway_endpoint(app[INVOKER], host=opts.gateway_host, port=opts.gateway_port,
                                          stubs_url=opts.repository_endpoint, max_body_size=opts.max_body_size,
                                          drain_timeout=opts.drain_timeout,
                                          **gateway_security(opts, opts.gateway_host, authn, tls)))
    return Service("controller", app, endpoints, shutdown_timeout=opts.drain_timeout, freeze_heap=False)


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_controller_options(argv)
    setup_logging(opts, daemon="controller")
    service = controller_service(opts)
    log.info("controller_starting", host=opts.bind_address, port=opts.port, funclet=opts.funclet_api_sock,
             registry=opts.repository_endpoint, event_loop=event_loop_name(loop_factory(opts.event_loop)))
    run_daemon([service], event_loop=opts.event_loop)
