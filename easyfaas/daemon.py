"""The one lifetime every daemon has: start, serve until SIGTERM/SIGINT, drain, clean up, exit 0.

A daemon is a list of services (:class:`Service`) run in one process on one event loop. A service
is an aiohttp application whose parts live in its ``cleanup_ctx`` (entered in order at start, left
in reverse at the end) and the sites it listens on, given declaratively (:class:`TCPEndpoint`,
:class:`UnixEndpoint`, or an endpoint of the daemon's own such as the controller's front door).
The separate daemons run one service each; ``easyfaas.all_in_one`` runs several.

:func:`run_daemon` is the whole lifetime:

1. the event loop (``--event-loop``: uvloop or asyncio) and one handler for SIGTERM and SIGINT;
2. each service in order: its runner is set up (its cleanup contexts are entered) and its sites
   start listening; then the start-up heap is frozen out of garbage collection
   (:mod:`easyfaas.heap`) and each service logs ``<name>_listening``;
3. at the first signal each service logs ``<name>_stopping``; later signals are logged and
   ignored, since shutting down half-way would leave the funclet's kernel objects behind (a
   signal during start-up lets the services being started finish starting, and starts no more);
4. the services stop in reverse order, each through its runner: its sites stop accepting (and an
   endpoint may first let its own connections finish), ``on_shutdown`` runs (a daemon begins its
   drain there), open connections get the service's shutdown timeout to finish their requests,
   then its cleanup contexts are left in reverse order;
5. :func:`run_daemon` returns, and the process exits 0. A service that cannot start for a reason
   of the host (the port is taken, a directory cannot be made: an OSError) is logged as
   ``<name>_failed`` and the process exits 1, after what had started was cleaned up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import structlog
from aiohttp import web

from easyfaas.heap import freeze_startup_heap
from easyfaas.http import JsonErrorAppRunner
from easyfaas.tls import ServerTLS

log = structlog.get_logger(__name__)

__all__ = ["EVENT_LOOPS", "Endpoint", "Service", "TCPEndpoint", "UnixEndpoint", "loop_factory", "run_daemon",
           "serve"]

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Endpoint(Protocol):
    """Where a service listens: makes the aiohttp site (started and stopped by the runner's lifetime)."""

    def site(self, runner: web.AppRunner) -> web.BaseSite: ...

    def describe(self) -> dict[str, Any]:
        """The fields of the ``<name>_listening`` event that say where it listens."""
        ...


@dataclass(frozen=True)
class TCPEndpoint:
    """A TCP listener; with ``tls``, HTTPS (its certificate reloaded on SIGHUP)."""

    host: str
    port: int
    tls: ServerTLS | None = None

    def site(self, runner: web.AppRunner) -> web.BaseSite:
        return web.TCPSite(runner, self.host, self.port, ssl_context=self.tls.context if self.tls else None)

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, **({"tls": True} if self.tls else {})}


class _UnixSocketSite(web.UnixSite):
    """A unix socket with the given mode, made in a directory made if missing; a stale socket
    (of a predecessor that was killed) is replaced, and the socket file goes when the site stops."""

    def __init__(self, runner: web.AppRunner, path: Path, mode: int) -> None:
        super().__init__(runner, str(path))
        self._socket_path = path
        self._mode = mode

    async def start(self) -> None:
        self._socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._socket_path.unlink(missing_ok=True)
        await super().start()
        os.chmod(self._socket_path, self._mode)

    async def stop(self) -> None:
        await super().stop()
        self._socket_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class UnixEndpoint:
    path: Path
    mode: int = 0o660

    def site(self, runner: web.AppRunner) -> web.BaseSite:
        return _UnixSocketSite(runner, Path(self.path), self.mode)

    def describe(self) -> dict[str, Any]:
        return {"socket": str(self.path)}


@dataclass
class Service:
    """One application of a daemon, with where it listens and how long its requests may drain.

    ``name`` names its log events (``<name>_listening``, ``<name>_stopping``, ``<name>_failed``);
    ``listening`` adds fields to the first; ``freeze_heap`` puts the count of frozen objects in it
    (the heap is frozen once, after every service of the process is listening).
    """

    name: str
    app: web.Application
    endpoints: Sequence[Endpoint]
    shutdown_timeout: float = 60.0
    listening: dict[str, Any] = field(default_factory=dict)
    freeze_heap: bool = True


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for ``--event-loop``: uvloop's C transports take a fifth off the controller's
    warm path CPU (``auto`` picks it when it is installed); None means asyncio's own loop."""
    if choice not in EVENT_LOOPS:
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


def event_loop_name(factory: Callable[[], asyncio.AbstractEventLoop] | None) -> str:
    return "asyncio" if factory is None else "uvloop"


class _StartFailed(Exception):
    def __init__(self, service: str, error: OSError) -> None:
        super().__init__(service, error)
        self.service = service
        self.error = error


async def serve(services: Sequence[Service], *, stop: asyncio.Event | None = None,
                ignore_late_stops: bool = False) -> None:
    """Run ``services`` until SIGTERM/SIGINT (or until ``stop`` is set), then stop them in reverse.

    ``ignore_late_stops`` (a daemon process's own lifetime): once stopped, SIGTERM and SIGINT are
    ignored rather than left to their default action."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.info("stop_signal_ignored", signal=signal.Signals(signum).name,
                     detail="already stopping; the shutdown timeouts bound how long it takes")
            return
        for service in services:
            log.info(f"{service.name}_stopping", signal=signal.Signals(signum).name)
        stop.set()

    def on_hangup() -> None:
        # SIGHUP: endpoints serving TLS load their certificate files again (for new connections).
        for service in services:
            for endpoint in service.endpoints:
                tls = getattr(endpoint, "tls", None)
                if tls is not None:
                    tls.reload()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    runners: list[tuple[Service, web.AppRunner]] = []
    try:
        for service in services:
            if stop.is_set():
                break
            runner = JsonErrorAppRunner(service.app, access_log=None, shutdown_timeout=service.shutdown_timeout)
            runners.append((service, runner))
            try:
                await runner.setup()
                for endpoint in service.endpoints:
                    await endpoint.site(runner).start()
            except OSError as exc:
                raise _StartFailed(service.name, exc) from exc
        if stop.is_set():
            return
        frozen = freeze_startup_heap() if any(s.freeze_heap for s in services) else None
        for service in services:
            fields: dict[str, Any] = {}
            for endpoint in service.endpoints:
                fields.update(endpoint.describe())
            fields.update(service.listening)
            if service.freeze_heap:
                fields["frozen_objects"] = frozen
            log.info(f"{service.name}_listening", **fields)
        await stop.wait()
    finally:
        # Reverse order: a service stops only after those started after it (which may call it).
        # One that fails to clean up does not keep the others from it.
        failed: list[BaseException] = []
        for service, runner in reversed(runners):
            try:
                await runner.cleanup()
            except Exception as exc:  # noqa: BLE001 - logged here, raised below
                log.exception(f"{service.name}_cleanup_failed")
                failed.append(exc)
        for signum in (*_STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # Already stopping: a late SIGTERM (a parent-death signal, a second stop) must not turn a
        # clean exit into death by the signal, as the default action would.
        if ignore_late_stops:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        if failed:
            raise failed[0]


def run_daemon(services: Sequence[Service], *, event_loop: str = "asyncio") -> None:
    """The whole lifetime of a daemon process (see the module docstring); returns when it stopped."""
    factory = loop_factory(event_loop)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(services, ignore_late_stops=True))
    except _StartFailed as exc:
        log.error(f"{exc.service}_failed", error=str(exc.error))
        sys.exit(1)
