"""easyfaas.daemon in process: services start in order and stop in reverse, each draining its
connections and leaving its cleanup contexts; a unix endpoint's socket has its mode and goes away;
a service whose cleanup fails does not keep the others from theirs."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from easyfaas.daemon import Service, TCPEndpoint, UnixEndpoint, serve
from easyfaas.pod_names import free_port


def _service(name: str, events: list[str], endpoint: object, *, fail_cleanup: bool = False) -> Service:
    app = web.Application()
    started = asyncio.Event()

    async def part(_: web.Application) -> AsyncIterator[None]:
        events.append(f"{name} started")
        yield
        events.append(f"{name} cleaned up")
        if fail_cleanup:
            raise RuntimeError(f"{name} cleanup failed")

    async def slow(_: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.5)
        events.append(f"{name} answered")
        return web.Response(text=name)

    async def shutdown(_: web.Application) -> None:
        events.append(f"{name} shutdown")

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.cleanup_ctx.append(part)
    app.on_shutdown.append(shutdown)
    app.router.add_get("/slow", slow)
    app.router.add_get("/", hello)
    service = Service(name, app, [endpoint], shutdown_timeout=10)  # type: ignore[list-item]
    service.started = started  # type: ignore[attr-defined]
    return service


async def _until_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")


async def test_services_stop_in_reverse_after_their_requests_finish(tmp_path: Path) -> None:
    events: list[str] = []
    port = free_port()
    sock = tmp_path / "run" / "api.sock"
    first = _service("first", events, UnixEndpoint(sock, 0o600))
    second = _service("second", events, TCPEndpoint("127.0.0.1", port))
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve([first, second], stop=stop))
    await _until_listening(port)
    assert events == ["first started", "second started"]
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    async with aiohttp.ClientSession() as session:
        async def get(url: str) -> str:
            async with session.get(url) as resp:
                return await resp.text()

        call = asyncio.create_task(get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.wait_for(second.started.wait(), 10)  # type: ignore[attr-defined]
        stop.set()
        assert await call == "second"
    await asyncio.wait_for(daemon, 30)
    assert events[2:] == ["second shutdown", "second answered", "second cleaned up",
                          "first shutdown", "first cleaned up"]
    assert not sock.exists()


async def test_a_failing_cleanup_does_not_skip_the_others(tmp_path: Path) -> None:
    events: list[str] = []
    port = free_port()
    first = _service("first", events, UnixEndpoint(tmp_path / "api.sock"))
    second = _service("second", events, TCPEndpoint("127.0.0.1", port), fail_cleanup=True)
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve([first, second], stop=stop))
    await _until_listening(port)
    stop.set()
    with pytest.raises(RuntimeError, match="second cleanup failed"):
        await asyncio.wait_for(daemon, 30)
    assert events[-1] == "first cleaned up"


_LATE_SIGTERM_DAEMON = """
import os, signal, sys, time
from aiohttp import web
from easyfaas.daemon import Service, TCPEndpoint, run_daemon

run_daemon([Service("late", web.Application(), [TCPEndpoint("127.0.0.1", int(sys.argv[1]))], shutdown_timeout=5)])
os.kill(os.getpid(), signal.SIGTERM)  # a late stop (a parent-death signal) after the daemon stopped
time.sleep(0.2)
print("exited cleanly", flush=True)
"""


async def test_a_late_sigterm_does_not_kill_a_daemon_that_is_stopping() -> None:
    import signal
    import sys

    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _LATE_SIGTERM_DAEMON, str(port),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        await _until_listening(port)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0 and "exited cleanly" in out.decode()
