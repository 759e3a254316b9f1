"""What the two HTTP/1.1 listeners that parse requests themselves with httptools (the controller's
front door, controller/front_door.py, and the HTTP gateway, httptrigger/server.py) share: the
listening socket with its sweep of idle keep-alive connections and its graceful stop, and a
connection's lifetime around the requests it parses (the queue of parsed requests that pauses
reading, a client's half-close, closing when idle, lingering after an error answer).

What each parses and answers, and how, stays in its own module: only the parts whose logic is the
same live here, so neither listener does more per request than before.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

KEEPALIVE_TIMEOUT = 75.0  # aiohttp's default
MAX_QUEUED = 8            # requests parsed but not yet answered before reading pauses
LINGER = 2.0              # seconds an errored connection still reads (and drops) before it closes
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class HttpDate:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode()
        return self._value


class Http1Listener:
    """A listening socket of :class:`Http1Connection` s; subclasses say what a connection is."""

    def __init__(self, keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        self.keepalive_timeout = keepalive_timeout
        self.date = HttpDate()
        self.connections: set[Http1Connection] = set()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sweep: asyncio.TimerHandle | None = None

    async def _listen(self, protocol: Callable[[asyncio.AbstractEventLoop], asyncio.Protocol], host: str, port: int,
                      ssl: Any) -> asyncio.AbstractServer:
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: protocol(loop), host, port, reuse_address=True,
                                                backlog=1024, ssl=ssl)
        # One sweep closes idle keep-alive connections, instead of a timer re-armed per request.
        self._sweep = loop.call_later(self._sweep_interval, self._close_idle)
        return self._server

    @property
    def _sweep_interval(self) -> float:
        return min(1.0, self.keepalive_timeout / 2)

    def _close_idle(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.idle and now - conn.last_active >= self.keepalive_timeout:
                conn.close_when_idle()
        self._sweep = None if self.closing else self.loop.call_later(self._sweep_interval, self._close_idle)

    def stop_accepting(self) -> None:
        """No new connections; idle ones close, busy ones close after their current answers."""
        self.closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()

    async def wait_idle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the requests under way on our connections, then close them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()


class Http1Connection(asyncio.Protocol):
    """One client connection of an :class:`Http1Listener`: the lifetime around its requests.

    A subclass parses (``current`` is the request being parsed, appended to ``pending`` by
    :meth:`_queue`) and answers them one at a time (``task``)."""

    def __init__(self, listener: Http1Listener, loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        self.loop = loop
        self.last_active = loop.time()
        self.transport: asyncio.Transport | None = None
        self.current: Any = None
        self.pending: deque[Any] = deque()
        self.task: asyncio.Task[None] | None = None
        self.reading_paused = False
        self.closing = False
        self.discarding = False

    @property
    def busy(self) -> bool:
        return self.task is not None or bool(self.pending)

    @property
    def idle(self) -> bool:
        return not self.busy and self.current is None and not self.discarding

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener.connections.add(self)
        if self.listener.closing:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()  # the client is gone: nobody reads the answer

    def eof_received(self) -> bool:
        # The client half-closed: answer what it sent, then close (a false return closes at once).
        if self.discarding or not (self.busy or self.current is not None):
            return False
        self.closing = True
        return True

    def close_when_idle(self) -> None:
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def on_message_complete(self) -> None:
        message, self.current = self.current, None
        assert message is not None
        if not message.queued:
            self._queue(message)

    def _queue(self, message: Any) -> None:
        message.queued = True
        self.pending.append(message)
        if len(self.pending) >= MAX_QUEUED and not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True

    def _next(self) -> None:
        """Start answering the oldest parsed request (called when none is being answered)."""
        raise NotImplementedError

    def _refuse(self, message: Any) -> None:
        """Queue a request whose body is over the limit, to be answered (413) at its turn without
        reading the rest of it."""
        message.too_large = True
        message.body = []
        self._queue(message)
        if self.task is None:
            self._next()

    def _linger_close(self) -> None:
        """Close after an error answer, reading (and dropping) what the client still sends for a
        moment: closing with unread data would reset the connection, and with it the answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.discarding = True
        self.pending.clear()
        if transport.can_write_eof():
            transport.write_eof()
        if self.reading_paused:
            transport.resume_reading()
            self.reading_paused = False
        self.loop.call_later(LINGER, transport.close)
