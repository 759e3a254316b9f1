"""One paho-mqtt client driven by the running asyncio event loop instead of a thread of its own:
paho's documented external-loop calls (``loop_read`` when the socket is readable, ``loop_write``
when it has output, ``loop_misc`` every second for the keepalive), and the reconnects with
back-off that paho's own thread would make.

Why not ``loop_start``: that thread woke for every message and every acknowledgement, handed each
message to the loop with ``call_soon_threadsafe`` and took the GIL from a busy event loop each
time; per message it cost the controller about as much CPU as the rest of the event's intake
(docs/performance.md). On the loop, a message is read where it is handled and its PUBACK is written
in the same loop iteration as the enqueue that allows it.

Only the connect itself (name lookup, TCP connect, TLS handshake: blocking in paho) runs on a
worker thread; paho's callbacks all run on the loop. The caller's ``on_connect``/``on_disconnect``
and friends are set on the client as usual; this link adds the socket callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable

import structlog

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = structlog.get_logger(__name__)

MISC_INTERVAL = 1.0  # paho's loop_misc: keepalive pings, and a broker that stopped answering them
DISCONNECT_WAIT = 1.0  # for the broker to close after our DISCONNECT
CONNECT_WAIT = 10.0  # for a connect under way on the worker thread when the link stops (paho's is 5 s)


class LoopLink:
    """Connects ``client`` to ``host:port`` and keeps it connected until :meth:`stop`.

    ``on_connect_failed(error)`` is told on the loop when a connection attempt fails before the
    broker answered (the broker's own refusal comes as paho's ``on_connect``). The delay between
    attempts doubles from ``min_delay`` to ``max_delay``; :meth:`connected` (called from the
    caller's ``on_connect`` on success) starts it over.
    """

    def __init__(self, client: paho.Client, host: str, port: int, keepalive: int, *, min_delay: float,
                 max_delay: float, on_connect_failed: Callable[[str], None]) -> None:
        self.client = client
        self.host, self.port, self.keepalive = host, port, keepalive
        self.min_delay, self.max_delay = min_delay, max_delay
        self.on_connect_failed = on_connect_failed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sock: Any = None  # the socket registered with the loop
        self._closed = asyncio.Event()  # the registered socket was closed (or none is registered yet)
        self._misc: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._flushing = False
        self._writer_added = False
        self._delay = min_delay
        self._runner: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[Any] | None = None  # reconnect() on the worker thread
        self._stopping = False
        # Opening is _run's (after reconnect() returns), and _flush keeps the writer callback
        # registered exactly while paho has output left: no open or unregister callbacks.
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._write_wanted

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._runner = self._loop.create_task(self._run())

    def connected(self) -> None:
        """The broker accepted the connection: the next reconnect waits ``min_delay`` again."""
        self._delay = self.min_delay

    async def stop(self) -> None:
        """DISCONNECT (the broker keeps a persistent session), close the socket, stop reconnecting."""
        self._stopping = True
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
                self._flush()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed.wait(), DISCONNECT_WAIT)
            self._unregister()
        if self._connecting is not None:
            # A socket that a connect under way opens must not outlive the link: let it finish.
            await asyncio.wait([self._connecting], timeout=CONNECT_WAIT)
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._unregister()
        self._close_socket()

    # ---- connecting ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            # paho's reconnect() is blocking (resolve, connect, TLS handshake): on a worker thread.
            self._connecting = asyncio.ensure_future(asyncio.to_thread(self.client.reconnect))
            try:
                await asyncio.shield(self._connecting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - OSError, ssl.SSLError, ValueError: report and retry
                if self._stopping:
                    return
                self.on_connect_failed(f"cannot connect to {self.host}:{self.port}: {exc}")
                await self._back_off()
                continue
            finally:
                if self._connecting is not None and self._connecting.done():
                    self._connecting = None
            if self._stopping:
                self._close_socket()
                return
            self._register()
            await self._closed.wait()
            if not self._stopping:
                await self._back_off()

    async def _back_off(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self.max_delay, self._delay * 2)

    def _register(self) -> None:
        sock = self.client.socket()
        loop = self._loop
        if sock is None or loop is None:  # closed again before we got here
            self._closed.set()
            return
        self._sock = sock
        self._closed.clear()
        loop.add_reader(sock, self._readable)
        self._misc = loop.call_later(MISC_INTERVAL, self._keepalive)
        self._flush()  # the CONNECT paho queued during reconnect()

    def _unregister(self) -> None:
        sock, self._sock = self._sock, None
        loop = self._loop
        if sock is None or loop is None:
            return
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        with contextlib.suppress(Exception):
            loop.remove_reader(sock)
        if self._writer_added:
            self._writer_added = False
            with contextlib.suppress(Exception):
                loop.remove_writer(sock)

    def _close_socket(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # ---- paho's socket callbacks ---------------------------------------------------------------

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _socket_closed(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if not self._on_loop():  # reconnect() closing what an earlier attempt left
            return
        if sock is self._sock:
            self._unregister()
            self._closed.set()

    def _write_wanted(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        # Called by paho for every packet queued (a PUBACK, a reply): the writes of one loop
        # iteration go out together, without an epoll registration for each. While the socket's
        # buffer is full, the writer callback flushes instead.
        if (not self._on_loop() or self._flushing or self._flush_scheduled or self._writer_added
                or self._loop is None):
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    # ---- the loop's side -----------------------------------------------------------------------

    def _readable(self) -> None:
        self.client.loop_read()
        sock = self._sock
        # TLS: bytes OpenSSL already decrypted wake no epoll (one record holding more than the
        # packets paho read); paho's own loop checks the same.
        pending = getattr(sock, "pending", None)
        if pending is not None and pending() > 0 and self._loop is not None:
            self._loop.call_soon(self._readable)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._sock is None:
            return
        self._flushing = True
        try:
            self.client.loop_write()
        finally:
            self._flushing = False
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:  # the write found the connection gone
            return
        if self.client.want_write():
            if not self._writer_added:  # the socket's buffer is full: the rest when it drains
                self._writer_added = True
                loop.add_writer(sock, self._flush)
        elif self._writer_added:
            self._writer_added = False
            loop.remove_writer(sock)

    def _keepalive(self) -> None:
        if self._sock is None or self._loop is None:
            return
        self.client.loop_misc()
        if self._sock is not None:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._keepalive)
