"""The controller's side of a slot's runtime channel: kept connections to its invoke socket.

A connection carries one request at a time (frames of :mod:`easyfaas.frames`), so a slot that
serves N requests concurrently needs N connections; :class:`RuntimeChannel` keeps up to
``max_connections`` of them open and reuses idle ones, which keeps connect() off the warm path.
A connection whose request failed in any way (timeout, EOF, garbage, cancellation) is closed, never
reused: its stream position is unknown.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from easyfaas.frames import FrameError, encode, read_frame

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Above this many unsent bytes, wait for the socket to drain (large events); small frames never wait.
_DRAIN_ABOVE = 256 * 1024


class ChannelError(Exception):
    """The request did not get a reply from the runtime."""


class ChannelTimeout(ChannelError):
    """No reply within the request's timeout."""


class ChannelClosed(ChannelError):
    """The runtime closed the connection or sent something that is not a valid reply."""


class ChannelUnavailable(ChannelClosed):
    """No connection could be made; nothing was sent to the runtime."""


class RuntimeChannel:
    def __init__(self, socket_path: str, max_connections: int = 1) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.socket_path = socket_path
        self.max_connections = max_connections
        self._idle: list[_Conn] = []
        self._all: set[asyncio.StreamWriter] = set()
        # Reserved or open connections; may exceed len(self._all) while a connect() is under way.
        self._open = 0
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._all)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request frame and return the reply frame (which must carry the same ``id``)."""
        if self._closed:
            raise ChannelUnavailable(f"the channel to {self.socket_path} is closed")
        data = encode(message)
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._take_idle()
                if conn is None:
                    conn = await self._new_or_wait()
                reader, writer = conn
                writer.write(data)
                if writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
                    await writer.drain()
                reply = await read_frame(reader)
        except TimeoutError:
            if conn is not None:
                self._discard(conn)
            raise ChannelTimeout(f"no reply within {timeout:g}s") from None
        except ChannelError:
            raise
        except (FrameError, OSError, asyncio.IncompleteReadError) as exc:
            if conn is not None:
                self._discard(conn)
            raise ChannelClosed(str(exc) or type(exc).__name__) from None
        except BaseException:
            if conn is not None:
                self._discard(conn)
            raise
        if reply is None:
            self._discard(conn)
            raise ChannelClosed("the runtime closed the connection")
        if reply.get("id") != message.get("id"):
            self._discard(conn)
            raise ChannelClosed(f"reply for request {reply.get('id')!r}, expected {message.get('id')!r}")
        self._put_back(conn)
        return reply

    def close(self) -> None:
        """Close every connection, idle or busy; calls in flight fail with ChannelClosed."""
        self._closed = True
        self._idle.clear()
        for writer in list(self._all):
            writer.close()
        self._all.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ChannelUnavailable(f"the channel to {self.socket_path} was closed"))

    # ---- connections ---------------------------------------------------------------------------

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn[0].at_eof() or conn[1].is_closing():
                self._discard(conn)
                continue
            return conn
        return None

    async def _new_or_wait(self) -> _Conn:
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
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
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except BaseException as exc:
            self._release_reservation()
            if isinstance(exc, OSError):
                raise ChannelUnavailable(f"cannot connect to {self.socket_path}: {exc.strerror or exc}") from None
            raise
        if self._closed:
            writer.close()
            raise ChannelUnavailable(f"the channel to {self.socket_path} was closed")
        self._all.add(writer)
        return reader, writer

    def _put_back(self, conn: _Conn) -> None:
        if self._closed:
            conn[1].close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        writer = conn[1]
        writer.close()
        if writer in self._all:
            self._all.discard(writer)
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
