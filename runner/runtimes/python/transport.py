"""The runtime channel of the Python runtime: frames in on connection threads, answers out.

Connection threads only read and write frames (``easyfaas/frames.py``). With a :class:`MainThread`
dispatcher every invocation is handed through a queue to the main thread, which runs the handler
and writes the answer: handlers can use ``signal`` and ``asyncio``'s main-thread loop, and
concurrent invocations of one runtime run one after another, as in Lambda. The exec mode and a
runtime whose handler failed to load answer on the connection threads instead. Stdlib only.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
import traceback
from typing import Callable

from easyfaas.frames import FrameError, InvokeRequest, InvokeResponse, encode, recv_frame
from runner.runtimes.python.errors import INTERNAL_ERROR, MARSHAL_ERROR, RESPONSE_TOO_LARGE, error_object, make_error

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
    try:
        payload = encode(response.to_wire())
    except FrameError as exc:
        payload = encode(InvokeResponse(request.id, False, error=make_error(str(exc), RESPONSE_TOO_LARGE)).to_wire())
    except (TypeError, ValueError) as exc:
        payload = encode(InvokeResponse(request.id, False, error=make_error(
            f"Unable to marshal response: {exc}", MARSHAL_ERROR)).to_wire())
    try:
        conn.sendall(payload)
    except OSError:
        return False
    return True


class MainThread:
    """Serialises invocations onto the thread that calls :meth:`run` (the main thread)."""

    def __init__(self, invoke: Invoke) -> None:
        self.invoke = invoke
        self._queue: queue.SimpleQueue[tuple[socket.socket, InvokeRequest, threading.Lock]] = queue.SimpleQueue()

    def submit(self, conn: socket.socket, request: InvokeRequest) -> None:
        """From a connection thread: blocks until the main thread has answered ``request``."""
        done = threading.Lock()
        done.acquire()
        self._queue.put((conn, request, done))
        done.acquire()  # the socket must stay open (its fd unreused) until the answer is written

    def run(self) -> None:
        while True:
            try:
                conn, request, done = self._queue.get()
            except Exception:  # noqa: BLE001 - a handler's signal handler fired while idle
                traceback.print_exc(file=sys.__stderr__)
                continue
            try:
                answer(conn, request, self.invoke)
            finally:
                done.release()


def serve_connection(conn: socket.socket, invoke: Invoke, main: MainThread | None) -> None:
    """One request at a time on one connection, until the peer closes it."""
    with conn:
        while True:
            try:
                body = recv_frame(conn)
            except (FrameError, OSError):
                return
            if body is None:
                return
            request = InvokeRequest.from_wire(body)
            if main is not None:
                main.submit(conn, request)
            elif not answer(conn, request, invoke):
                return


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
