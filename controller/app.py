"""The controller daemon: application factory, the lifetimes of its parts, and ``main``.

Parts and their order (cleanup runs in reverse): the funclet and registry clients, the code
prefetcher (builds new functions' code images ahead of their first invocation), the slot pool
(which finds the funclet's sandboxes in the background and runs the periodic task), and the invoke
pipeline (whose asynchronous invocations are drained before the pool goes away).

Shutdown (SIGTERM): the listener closes, the pool stops growing and pre-warming, in-flight and
queued requests get up to ``--drain-timeout`` to finish, then the pool and clients are closed.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Sequence

import structlog
from aiohttp import web

from controller.code_prefetch import CodePrefetcher
from controller.funclet_client import FuncletClient
from controller.handlers import INVOKER, POOL, PREFETCHER, add_routes
from controller.invoke import Invoker
from controller.options import deprecated_options, parse_controller_options
from controller.pool import Pool
from controller.registry import Registry
from easyfaas.config import Settings
from controller.front_door import FrontDoor
from easyfaas.http import JsonErrorAppRunner, error_middleware, request_id_middleware, wait_for_stop_signal
from easyfaas.heap import freeze_startup_heap
from easyfaas.logging import setup_logging

log = structlog.get_logger(__name__)

OPTIONS = web.AppKey("options", Settings)
FUNCLET = web.AppKey("funclet", FuncletClient)
REGISTRY = web.AppKey("registry", Registry)

__all__ = ["FUNCLET", "INVOKER", "OPTIONS", "POOL", "REGISTRY", "create_app", "main"]

DRAIN_TIMEOUT = 30.0


def create_app(opts: Settings, *, funclet: FuncletClient | None = None,
               registry: Registry | None = None) -> web.Application:
    """The controller application; ``funclet`` and ``registry`` may be given (tests), else built from opts."""
    # One byte over the limit so an oversized body is detected by us, with our error, not aiohttp's.
    app = web.Application(middlewares=[request_id_middleware, error_middleware],
                          client_max_size=opts.max_body_size + 1)
    funclet = funclet if funclet is not None else FuncletClient(opts.funclet_api_sock, timeout=opts.funclet_timeout)
    registry = registry if registry is not None else Registry(
        opts.repository_endpoint, opts.repository_version, function_ttl=opts.function_cache_ttl,
        latest_ttl=opts.latest_cache_ttl, runtime_ttl=opts.runtime_config_cache_ttl, timeout=opts.registry_timeout)
    for old, new in deprecated_options(opts):
        log.warning("option_deprecated", option=f"--{old}", use=f"--{new}")
    pool = Pool(funclet, runtime_alive_timeout=opts.runtime_alive_timeout, task_interval=opts.task_interval,
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
    app.cleanup_ctx.append(_clients)
    if getattr(opts, "prefetch_code", True):
        app[PREFETCHER] = CodePrefetcher(registry, funclet)
        app.cleanup_ctx.append(_prefetch)
    app.cleanup_ctx.append(_pool)
    app.cleanup_ctx.append(_async_invocations)
    app.on_shutdown.append(_begin_drain)
    add_routes(app)
    return app


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


async def _async_invocations(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[INVOKER].drain(getattr(app[OPTIONS], "drain_timeout", DRAIN_TIMEOUT))


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_controller_options(argv)
    setup_logging(opts, daemon="controller")
    if opts.http_enhanced:
        log.warning("http_enhanced_unavailable", detail="the embedded HTTP trigger is not implemented; flag ignored")
    app = create_app(opts)
    factory = loop_factory(opts.event_loop)
    log.info("controller_starting", host=opts.bind_address, port=opts.port, funclet=opts.funclet_api_sock,
             registry=opts.repository_endpoint, event_loop="asyncio" if factory is None else "uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(app, host=opts.bind_address, port=opts.port, shutdown_timeout=opts.drain_timeout))


async def _freeze_when_ready(pool: Pool, timeout: float = 60.0) -> None:
    """Freeze the heap once the pool knows its sandboxes (slots are the bulk of what start-up builds)."""
    try:
        await pool.wait_ready(timeout)
    except TimeoutError:
        pass
    log.info("controller_heap_frozen", objects=freeze_startup_heap())


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The controller's event loop: uvloop's C transports take a fifth off the warm path's CPU."""
    if choice not in ("auto", "uvloop", "asyncio"):
        raise SystemExit(f"--event-loop must be auto, uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


async def serve(app: web.Application, *, host: str, port: int, shutdown_timeout: float) -> None:
    """Serve until SIGINT/SIGTERM: invocations through the front door, the rest through aiohttp."""
    runner = JsonErrorAppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    assert runner.server is not None
    door = FrontDoor(app[INVOKER], runner.server)
    freezing = asyncio.get_running_loop().create_task(_freeze_when_ready(app[POOL]))
    try:
        await door.start(host, port)
        log.info("controller_listening", host=host, port=port)
        await wait_for_stop_signal()
    finally:
        freezing.cancel()
        # Requests under way on the front door's connections finish first (their pool is still
        # open); then aiohttp's connections drain and the application's parts close.
        door.stop_accepting()
        await door.wait_idle(shutdown_timeout)
        await runner.cleanup()
