"""The runtime channel of the Python runtime: frames in, each answered by the thread that read it.

Requests and answers are frames (``easyfaas/frames.py``). With :class:`MainThread` the main thread
accepts, reads and answers every connection itself and runs the handler: handlers can use
``signal`` and ``asyncio``'s main-thread loop, and concurrent invocations of one runtime run one
after another, as in Lambda. The exec mode and a runtime whose handler failed to load answer on a
thread per connection instead. Stdlib only.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import sys
import threading
import time
import traceback
from typing import Callable

from easyfaas.frames import FrameError, InvokeRequest, InvokeResponse, decode_body, encode, recv_frame, split_frames
from runner.runtimes.python.errors import INTERNAL_ERROR, MARSHAL_ERROR, RESPONSE_TOO_LARGE, error_object, make_error
from runner.runtimes.python.memory_peak import peak_kb

Invoke = Callable[[InvokeRequest], InvokeResponse]
_RETRYABLE_ACCEPT_ERRNOS = (23, 24, 105, 12)  # ENFILE, EMFILE, ENOBUFS, ENOMEM: back off, retry
_RECV_SIZE = 256 * 1024


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


class MainThread:
    """Serves every controller connection from the thread that calls :meth:`run` (the main thread).

    One epoll loop on that thread accepts connections, reads their frames and runs each
    invocation as its frame is whole, then writes the answer: the thread that reads a request is
    the one that runs its handler, so a call wakes one thread once. (A reader thread per connection
    handing calls to the main thread woke two threads per call, which made the runtime's CPU per
    call twice that of answering on the reader thread; docs/performance.md.) Concurrent
    invocations of one runtime run one after another, as in Lambda.
    """

    def __init__(self, listener: socket.socket, invoke: Invoke) -> None:
        self.listener = listener
        self.invoke = invoke
        # select.epoll rather than selectors: its bookkeeping per wake-up was a tenth of a call.
        self._epoll = select.epoll()
        self._conns: dict[int, socket.socket] = {}
        # Per connection: what was read of its next frame, and the callback its frames go to (made
        # once here, not at every read).
        self._buffers: dict[socket.socket, tuple[bytearray, Callable[[bytes], bool]]] = {}
        self._read_buffer = bytearray(_RECV_SIZE)
        self._read_view = memoryview(self._read_buffer)

    def run(self) -> None:
        epoll = self._epoll
        listener_fd = self.listener.fileno()
        epoll.register(listener_fd, select.EPOLLIN)
        conns = self._conns
        while True:
            try:
                ready = epoll.poll()
            except Exception:  # noqa: BLE001 - a handler's signal handler fired while idle
                traceback.print_exc(file=sys.__stderr__)
                continue
            try:
                for fd, _ in ready:
                    if fd == listener_fd:
                        self._accept()
                    else:
                        sock = conns.get(fd)
                        if sock is not None:  # not closed by an earlier event of this round
                            self._serve(sock)
            except Exception:  # noqa: BLE001 - a handler's signal handler fired between invocations
                traceback.print_exc(file=sys.__stderr__)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (InterruptedError, BlockingIOError):
            return
        except OSError as exc:
            if exc.errno in _RETRYABLE_ACCEPT_ERRNOS:
                time.sleep(0.05)
                return
            # fd 3 is gone: nothing can reach this runtime any more; exiting tells the runner.
            sys.__stderr__.write(f"easyfaas python runtime: the invoke listener failed: {exc}\n")
            os._exit(1)
        self._buffers[conn] = (bytearray(), functools.partial(self._answer, conn))
        self._conns[conn.fileno()] = conn
        self._epoll.register(conn.fileno(), select.EPOLLIN)

    def _serve(self, sock: socket.socket) -> None:
        """Read what ``sock`` has and answer every whole frame in it; close it at EOF or on garbage."""
        # Into one buffer kept for every read: a fresh bytes object of _RECV_SIZE per call is an
        # mmap, mremap and munmap each time.
        try:
            n = sock.recv_into(self._read_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self._close(sock)
            return
        buf, take = self._buffers[sock]
        buf += self._read_view[:n]
        try:
            split_frames(buf, take)
        except FrameError:  # over MAX_FRAME, or not a JSON object
            self._close(sock)

    def _answer(self, sock: socket.socket, body: bytes) -> bool:
        """Answer one request frame; False (the connection closed) when the peer is gone."""
        if answer(sock, InvokeRequest.from_wire(decode_body(body)), self.invoke):
            return True
        self._close(sock)
        return False

    def _close(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self._epoll.unregister(fd)
        del self._conns[fd]
        del self._buffers[sock]
        sock.close()


def serve_connection(sock: socket.socket, invoke: Invoke) -> None:
    """Read requests from one connection until the peer closes it; each is answered in turn."""
    try:
        while True:
            try:
                body = recv_frame(sock)
            except (FrameError, OSError):
                return
            if body is None:
                return
            if not answer(sock, InvokeRequest.from_wire(body), invoke):
                return
    finally:
        sock.close()


def accept_loop(listener: socket.socket, invoke: Invoke) -> None:
    try:
        _accept_forever(listener, invoke)
    except OSError as exc:
        # fd 3 is gone: nothing can reach this runtime any more; exiting tells the runner.
        sys.__stderr__.write(f"easyfaas python runtime: the invoke listener failed: {exc}\n")
        os._exit(1)


def _accept_forever(listener: socket.socket, invoke: Invoke) -> None:
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
        threading.Thread(target=serve_connection, args=(conn, invoke), daemon=True,
                         name="easyfaas-conn").start()


def serve(listener: socket.socket, invoke: Invoke, on_main_thread: bool) -> None:
    """Serve fd 3 until the process is killed; handlers on the calling thread when asked."""
    if not on_main_thread:
        accept_loop(listener, invoke)
        return
    MainThread(listener, invoke).run()
