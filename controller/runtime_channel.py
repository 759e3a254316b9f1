"""The controller's side of a slot's runtime channel: kept connections to its invoke socket.

A connection carries one request at a time (an :class:`~easyfaas.frames.InvokeRequest` frame out, an
:class:`~easyfaas.frames.InvokeResponse` frame back), so a slot that
serves N requests concurrently needs N connections; :class:`RuntimeChannel` keeps up to
``max_connections`` of them open and reuses idle ones, which keeps connect() off the warm path.
A connection whose request failed in any way (timeout, EOF, garbage, cancellation) is closed, never
reused: its stream position is unknown.

Each connection is an :class:`asyncio.Protocol` rather than a StreamReader/StreamWriter pair: on the
warm path the reply frame usually arrives in one ``data_received`` call and goes straight to the
waiting request's future, with one timer handle for its deadline. Profiles of the warm path at
c=64 showed the streams' ``readexactly`` pair and ``asyncio.timeout`` as a tenth of the
controller's time (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections import deque
from easyfaas.frames import (HEADER, MAX_FRAME, FrameError, InvokeRequest, InvokeResponse, decode_body, encode,
                             split_frames)

_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from


class ChannelError(Exception):
    """The request did not get a reply from the runtime."""


class ChannelTimeout(ChannelError):
    """No reply within the request's timeout."""


class ChannelClosed(ChannelError):
    """The runtime closed the connection or sent something that is not a valid reply."""


class ChannelUnavailable(ChannelClosed):
    """No connection could be made; nothing was sent to the runtime."""


class _FrameConnection(asyncio.Protocol):
    """One connection to the runtime; hands each whole reply frame's body to the waiting request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.closed = False
        self._buf = bytearray()
        self._error: ChannelClosed | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if not buf and len(data) >= _HEADER_SIZE:
            # The usual case: exactly one whole frame in one read.
            (length,) = _unpack_header(data)
            if len(data) == _HEADER_SIZE + length and length <= MAX_FRAME:
                self._deliver(data[_HEADER_SIZE:])
                return
        buf += data
        try:
            split_frames(buf, self._deliver)
        except FrameError as exc:
            self._fail(ChannelClosed(str(exc)))

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed runtime connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._error is None:
            if self._buf:
                self._error = ChannelClosed("connection closed mid-frame")
            else:
                self._error = ChannelClosed(f"the runtime closed the connection{f': {exc}' if exc else ''}")
        self._wake_with(self._error)

    # ---- internals -------------------------------------------------------------------------------

    def _deliver(self, body: bytes) -> bool:
        """Whether the connection can take another frame."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Nobody asked: the stream is out of step (a reply after a timeout, say).
            self._fail(ChannelClosed("the runtime sent a frame nobody was waiting for"))
            return False
        self.waiter = None
        waiter.set_result(body)
        return not self.closed

    def _fail(self, error: ChannelClosed) -> None:
        self._error = error
        self._wake_with(error)
        self.close()

    def _wake_with(self, error: ChannelClosed) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


# Deadlines are checked by one sweep per channel every SWEEP_INTERVAL while calls are in flight,
# not by a timer per call: thousands of timer handles a second (each pushed onto, cancelled in and
# popped off the loop's heap) were a tenth of the warm path. A timeout is late by at most this.
SWEEP_INTERVAL = 0.05


class RuntimeChannel:
    def __init__(self, socket_path: str, max_connections: int = 1) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.socket_path = socket_path
        self.max_connections = max_connections
        self._idle: list[_FrameConnection] = []
        self._all: set[_FrameConnection] = set()
        # Reserved or open connections; may exceed len(self._all) while a connect() is under way.
        self._open = 0
        self._waiters: deque[asyncio.Future[_FrameConnection | None]] = deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: dict[asyncio.Future[bytes], float] = {}
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        return len(self._all)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, request: InvokeRequest, timeout: float) -> InvokeResponse:
        """Send one request frame and return the runtime's response (which must carry the same ``id``).

        A reply that is not a valid response frame (:meth:`InvokeResponse.from_wire`) is ChannelClosed.
        """
        if self._closed:
            raise ChannelUnavailable(f"the channel to {self.socket_path} is closed")
        data = encode(request.to_wire())
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take_idle()
        if conn is None:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._new_or_wait()
            except TimeoutError:
                raise ChannelTimeout(f"no reply within {timeout:g}s") from None
        waiter: asyncio.Future[bytes] = loop.create_future()
        conn.waiter = waiter
        self._deadlines[waiter] = deadline
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_INTERVAL, self._expire_overdue)
        try:
            assert conn.transport is not None
            conn.transport.write(data)
            body = await waiter
        except TimeoutError:
            self._discard(conn)
            raise ChannelTimeout(f"no reply within {timeout:g}s") from None
        except BaseException:
            self._discard(conn)
            raise
        finally:
            del self._deadlines[waiter]
        try:
            response = InvokeResponse.from_wire(decode_body(body))
        except FrameError as exc:
            self._discard(conn)
            raise ChannelClosed(str(exc)) from None
        if response.id != request.id:
            self._discard(conn)
            raise ChannelClosed(f"reply for request {response.id!r}, expected {request.id!r}")
        self._put_back(conn)
        return response

    def _expire_overdue(self) -> None:
        self._sweep = None
        if not self._deadlines or self._loop is None:
            return
        now = self._loop.time()
        for waiter, deadline in list(self._deadlines.items()):
            if deadline <= now and not waiter.done():
                waiter.set_exception(TimeoutError())
        self._sweep = self._loop.call_later(SWEEP_INTERVAL, self._expire_overdue)

    def close(self) -> None:
        """Close every connection, idle or busy; calls in flight fail with ChannelClosed."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._all):
            conn._fail(ChannelClosed(f"the channel to {self.socket_path} was closed"))
        self._all.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ChannelUnavailable(f"the channel to {self.socket_path} was closed"))

    # ---- connections ---------------------------------------------------------------------------

    def _take_idle(self) -> _FrameConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            self._discard(conn)
        return None

    async def _new_or_wait(self) -> _FrameConnection:
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_FrameConnection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection or a reservation just as we were cancelled: pass it on.
                    handed = waiter.result()
                    if handed is None:
                        self._release_reservation()
                    else:
                        self._put_back(handed)
                else:
                    waiter.cancel()
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                raise
            if conn is not None:
                return conn
            # A reservation was handed over: self._open already counts it.
        else:
            self._open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_unix_connection(_FrameConnection, self.socket_path)
        except BaseException as exc:
            self._release_reservation()
            if isinstance(exc, OSError):
                raise ChannelUnavailable(f"cannot connect to {self.socket_path}: {exc.strerror or exc}") from None
            raise
        if self._closed:
            conn.close()
            raise ChannelUnavailable(f"the channel to {self.socket_path} was closed")
        self._all.add(conn)
        return conn

    def _put_back(self, conn: _FrameConnection) -> None:
        if self._closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: _FrameConnection) -> None:
        conn.close()
        if conn in self._all:
            self._all.discard(conn)
            self._release_reservation()

    def _release_reservation(self) -> None:
        self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # The waiter may now open a connection of its own: hand it our place.
                self._open += 1
                waiter.set_result(None)
                return
