"""The runtime channel of the Python runtime: frames in on connection threads, answers out.

Connection threads only read and write frames (``easyfaas/frames.py``). With a :class:`MainThread`
dispatcher every invocation is handed through a queue to the main thread, which runs the handler
and writes the answer: handlers can use ``signal`` and ``asyncio``'s main-thread loop, and
concurrent invocations of one runtime run one after another, as in Lambda. The exec mode and a
runtime whose handler failed to load answer on the connection threads instead. Stdlib only.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time
import traceback
from typing import Callable

from easyfaas.frames import FrameError, InvokeRequest, InvokeResponse, encode, recv_frame
from runner.runtimes.python.errors import INTERNAL_ERROR, MARSHAL_ERROR, RESPONSE_TOO_LARGE, error_object, make_error
from runner.runtimes.python.memory_peak import peak_kb

Invoke = Callable[[InvokeRequest], InvokeResponse]
_RETRYABLE_ACCEPT_ERRNOS = (23, 24, 105, 12)  # ENFILE, EMFILE, ENOBUFS, ENOMEM: back off, retry


def answer(conn: socket.socket, request: InvokeRequest, invoke: Invoke) -> bool:
    """Run one invocation and write its response frame; False when the peer is gone."""
    try:
        response = invoke(request)
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not look like a dead runtime
        traceback.print_exc(file=sys.__stderr__)
        response = InvokeResponse(request.id, False, error=error_object(exc, INTERNAL_ERROR),
                                  logs="" if request.log else None)
    # Measured after the handler (and an exec invocation's process, waited for) ran.
    memory = response.memory_peak_kb = peak_kb()
    try:
        payload = encode(response.to_wire())
    except FrameError as exc:
        payload = encode(InvokeResponse(request.id, False, error=make_error(str(exc), RESPONSE_TOO_LARGE),
                                        memory_peak_kb=memory).to_wire())
    except (TypeError, ValueError) as exc:
        payload = encode(InvokeResponse(request.id, False, error=make_error(
            f"Unable to marshal response: {exc}", MARSHAL_ERROR), memory_peak_kb=memory).to_wire())
    try:
        conn.sendall(payload)
    except OSError:
        return False
    return True


class Connection:
    """A controller connection shared by its reader thread and the main thread.

    The socket is closed by whichever side finishes last: the reader at EOF when no answer is
    owed, else the main thread after its last answer, so that the fd number is never reused
    while an answer is still to be written to it.
    """

    __slots__ = ("sock", "owed", "eof", "lock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.owed = 0
        self.eof = False
        self.lock = threading.Lock()

    def expect_answer(self) -> None:
        with self.lock:
            self.owed += 1

    def answered(self) -> None:
        with self.lock:
            self.owed -= 1
            close = self.eof and not self.owed
        if close:
            self.sock.close()

    def reader_done(self) -> None:
        with self.lock:
            self.eof = True
            close = not self.owed
        if close:
            self.sock.close()


class MainThread:
    """Serialises invocations onto the thread that calls :meth:`run` (the main thread).

    The hand-over is a deque and an eventfd rather than a ``queue``: the connection thread wakes
    the main thread inside a system call, with the GIL released, so that the main thread runs at
    once instead of waking twice (once for the queue, again for the GIL).
    """

    def __init__(self, invoke: Invoke) -> None:
        self.invoke = invoke
        self._pending: collections.deque[tuple[Connection, InvokeRequest]] = collections.deque()
        self._wakeup = os.eventfd(0, os.EFD_CLOEXEC)

    def submit(self, conn: Connection, request: InvokeRequest) -> None:
        """From a connection thread: queue ``request``; the main thread answers it on ``conn``."""
        conn.expect_answer()
        self._pending.append((conn, request))
        os.eventfd_write(self._wakeup, 1)

    def run(self) -> None:
        pending = self._pending
        while True:
            try:
                os.eventfd_read(self._wakeup)
            except Exception:  # noqa: BLE001 - a handler's signal handler fired while idle
                traceback.print_exc(file=sys.__stderr__)
                continue
            while pending:
                conn, request = pending.popleft()
                try:
                    answer(conn.sock, request, self.invoke)
                finally:
                    conn.answered()


def serve_connection(sock: socket.socket, invoke: Invoke, main: MainThread | None) -> None:
    """Read requests from one connection until the peer closes it; each is answered in turn."""
    conn = Connection(sock)
    try:
        while True:
            try:
                body = recv_frame(sock)
            except (FrameError, OSError):
                return
            if body is None:
                return
            request = InvokeRequest.from_wire(body)
            if main is not None:
                main.submit(conn, request)
            elif not answer(sock, request, invoke):
                return
    finally:
        conn.reader_done()


def accept_loop(listener: socket.socket, invoke: Invoke, main: MainThread | None) -> None:
    try:
        _accept_forever(listener, invoke, main)
    except OSError as exc:
        # fd 3 is gone: nothing can reach this runtime any more; exiting tells the runner.
        sys.__stderr__.write(f"easyfaas python runtime: the invoke listener failed: {exc}\n")
        os._exit(1)


def _accept_forever(listener: socket.socket, invoke: Invoke, main: MainThread | None) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in _RETRYABLE_ACCEPT_ERRNOS:
                time.sleep(0.05)
                continue
            raise
        threading.Thread(target=serve_connection, args=(conn, invoke, main), daemon=True,
                         name="easyfaas-conn").start()


def serve(listener: socket.socket, invoke: Invoke, on_main_thread: bool) -> None:
    """Serve fd 3 until the process is killed; handlers on the calling thread when asked."""
    if not on_main_thread:
        accept_loop(listener, invoke, None)
        return
    main = MainThread(invoke)
    threading.Thread(target=accept_loop, args=(listener, invoke, main), daemon=True,
                     name="easyfaas-accept").start()
    main.run()
