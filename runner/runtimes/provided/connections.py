"""The connections of the ``provided`` runtime's selector loop (``runtime_api.py``).

``FrameConn`` is a controller connection on fd 3 (frames in, response frames out), ``ApiConn`` a
connection of the function's bootstrap to the Runtime API (HTTP/1.1, kept alive); both are
non-blocking with an output buffer, and hand what they read to the server. Stdlib only.
"""

from __future__ import annotations

import selectors
import socket
from typing import TYPE_CHECKING, Any

from easyfaas.frames import HEADER, MAX_FRAME, FrameError, InvokeRequest, InvokeResponse, decode_body, encode
from runner.runtimes.provided import http_wire
from runner.runtimes.provided.http_wire import BadRequest, BodyTooLarge, Request

if TYPE_CHECKING:
    from runner.runtimes.provided.runtime_api import RuntimeApiServer

MAX_RESPONSE = 6 * 1024 * 1024 + 100  # Lambda's limit on a response: 6 MiB + 100 bytes


class Connection:
    """A non-blocking socket with an output buffer; ``on_read`` gets what arrives."""

    def __init__(self, server: RuntimeApiServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.out = bytearray()
        self.closing = False  # close once the output buffer is written
        self.closed = False
        sock.setblocking(False)
        server.selector.register(sock, selectors.EVENT_READ, self)

    def send(self, data: bytes, close: bool = False) -> None:
        if self.closed:
            return
        if not self.out:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            data = data[sent:]
        if data:
            self.out += data
            self.server.selector.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)
        self.closing = self.closing or close
        if self.closing and not self.out:
            self.close()

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.out[:sent]
        if not self.out:
            if self.closing:
                self.close()
            else:
                self.server.selector.modify(self.sock, selectors.EVENT_READ, self)

    def on_readable(self) -> None:
        buffer = self.server.read_buffer  # one buffer for every read: no 256 KiB allocation per call
        try:
            size = self.sock.recv_into(buffer)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if not size:
            self.close()
            return
        self.on_read(bytes(buffer[:size]))

    def on_read(self, data: bytes) -> None:
        raise NotImplementedError

    def flush_blocking(self) -> None:
        """Write what is buffered, waiting if need be (before the process exits)."""
        if self.closed or not self.out:
            return
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.sendall(self.out)
        except OSError:
            pass
        self.out.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.server.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.on_close()

    def on_close(self) -> None:
        pass


class FrameConn(Connection):
    """A connection of the controller on fd 3: frames in, response frames out."""

    def __init__(self, server: RuntimeApiServer, sock: socket.socket) -> None:
        super().__init__(server, sock)
        self.buffer = bytearray()

    def on_read(self, data: bytes) -> None:
        if not self.buffer and len(data) >= HEADER.size:
            (length,) = HEADER.unpack_from(data)
            if len(data) == HEADER.size + length and length <= MAX_FRAME:
                self._frame(data[HEADER.size:])  # one whole frame, as a call's frame arrives
                return
        self.buffer += data
        while len(self.buffer) >= HEADER.size and not self.closed:
            (length,) = HEADER.unpack_from(self.buffer)
            if length > MAX_FRAME:
                self.close()
                return
            if len(self.buffer) < HEADER.size + length:
                return
            body = bytes(self.buffer[HEADER.size:HEADER.size + length])
            del self.buffer[:HEADER.size + length]
            self._frame(body)

    def _frame(self, body: bytes) -> None:
        try:
            request = InvokeRequest.from_wire(decode_body(body))
        except FrameError:
            self.close()
            return
        self.server.enqueue(request, self)

    def on_close(self) -> None:
        self.server.frame_conns.discard(self)

    def answer(self, response: InvokeResponse) -> None:
        try:
            payload = encode(response.to_wire())
        except FrameError as exc:
            error = {"errorMessage": str(exc), "errorType": "Function.ResponseSizeTooLarge", "stackTrace": []}
            payload = encode(InvokeResponse(response.id, False, error=error, fatal=response.fatal,
                                            logs=response.logs).to_wire())
        self.send(payload)


class ApiConn(Connection):
    """A connection of the bootstrap to the Runtime API: HTTP/1.1 requests, kept alive."""

    def __init__(self, server: RuntimeApiServer, sock: socket.socket) -> None:
        super().__init__(server, sock)
        self.parser = http_wire.RequestParser(MAX_RESPONSE)

    def on_read(self, data: bytes) -> None:
        self.parser.feed(data)
        while not self.closed:
            try:
                request = self.parser.next()
            except BodyTooLarge as exc:
                self.server.response_too_large(self, self.parser.head, exc.size)
                return
            except BadRequest as exc:
                self.send(http_wire.render_error(exc.status, "InvalidRequest", str(exc), close=True))
                return
            if request is None:
                if self.parser.wants_continue():
                    self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.server.route(self, request)
            if not self.parser.buffer:
                return  # nothing more in this read (the usual case: one request a read)

    def reply(self, status: int, payload: dict[str, Any], request: Request) -> None:
        self.send(http_wire.render_json(status, payload, close=not request.keep_alive),
                  close=not request.keep_alive)

    def accepted(self, request: Request) -> None:
        """202 to an invocation response or error (rendered once, for a kept-alive connection)."""
        if request.keep_alive:
            self.send(http_wire.ACCEPTED)
        else:
            self.reply(202, {"status": "OK"}, request)

    def refuse(self, status: int, error_type: str, message: str, request: Request | None) -> None:
        close = request is None or not request.keep_alive
        self.send(http_wire.render_error(status, error_type, message, close=close), close=close)

    def on_close(self) -> None:
        self.server.api_closed(self)
