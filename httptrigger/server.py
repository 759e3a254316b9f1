"""The gateway's listening socket: HTTP/1.1 parsed with httptools, each request answered by a handler.

aiohttp's per-request machinery costs about as much CPU as the controller's whole warm path
(docs/performance.md), so the gateway, like the controller's front door, parses requests itself
(llhttp via httptools) and writes its answers as one buffer.

Requests on one connection are answered in order, one at a time; reading pauses while a few are
waiting. ``Expect: 100-continue`` is honoured; a body announced (or, chunked, found) larger than
the limit is answered 413 at once, never buffered, and the connection closed; a connection idle for
the keep-alive timeout is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import structlog

from easyfaas.http import REQUEST_ID, request_id_of
from easyfaas.http1_listener import KEEPALIVE_TIMEOUT, MAX_QUEUED, REASONS, Http1Connection, Http1Listener
from httptrigger.request import HttpRequest
from httptrigger.response import Failure, HttpAnswer, Product, error_answer

log = structlog.get_logger(__name__)

Handler = Callable[[HttpRequest], Awaitable[HttpAnswer]]

MAX_HEAD_BYTES = 64 * 1024  # request line and headers of one request
_REQUEST_ID_LOWER = REQUEST_ID.lower()


class HttpServer(Http1Listener):
    """Serves ``handler`` on a TCP port until stopped."""

    def __init__(self, handler: Handler, *, max_body_size: int, keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        super().__init__(keepalive_timeout)
        self.handler = handler
        self.max_body_size = max_body_size
        self._port = 0

    async def start(self, host: str, port: int, *, ssl: Any = None) -> None:
        server = await self._listen(lambda loop: _Connection(self, loop), host, port, ssl)
        self._port = int(server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        return self._port

    async def close(self, timeout: float = 10.0) -> None:
        self.stop_accepting()
        await self.wait_idle(timeout)


class _Message:
    __slots__ = ("method", "url", "headers", "body", "size", "keep_alive", "version", "too_large", "queued",
                 "head_bytes")

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.version = "1.1"
        self.too_large = False
        self.queued = False
        self.head_bytes = 0


class _Connection(Http1Connection):
    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(server, loop)
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else ""
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError:
            self._fail(400, "the request is not valid HTTP")
            return
        if self.pending and self.task is None:
            self._next()

    # ---- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Message()

    def on_url(self, url: bytes) -> None:
        message = self.current
        assert message is not None
        message.url += url
        self._count_head(message, len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self.current
        assert message is not None
        message.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._count_head(message, len(name) + len(value))

    def _count_head(self, message: _Message, size: int) -> None:
        message.head_bytes += size
        if message.head_bytes > MAX_HEAD_BYTES:
            # Raised out of feed_data: answered like any request we cannot parse.
            raise httptools.HttpParserError("request line and headers over the limit")

    def on_headers_complete(self) -> None:
        message = self.current
        assert message is not None
        message.method = self.parser.get_method().decode("ascii", "replace")
        message.version = self.parser.get_http_version()
        message.keep_alive = self.parser.should_keep_alive()
        continue_expected = False
        for name, value in message.headers:
            lower = name.lower()
            if lower == "content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > self.server.max_body_size:
                        message.too_large = True
            elif lower == "expect" and value.lower() == "100-continue":
                continue_expected = True
        if message.too_large:
            self._refuse(message)  # answered 413 at its turn, without waiting for the body; then closed
            return
        if continue_expected and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        message = self.current
        assert message is not None
        if message.too_large:
            return
        message.size += len(body)
        if message.size > self.server.max_body_size:
            self._refuse(message)
            return
        message.body.append(body)

    # ---- answering -------------------------------------------------------------------------------

    def _next(self) -> None:
        if not self.pending or self.transport is None or self.transport.is_closing():
            return
        message = self.pending.popleft()
        if self.reading_paused and len(self.pending) < MAX_QUEUED // 2:
            self.transport.resume_reading()
            self.reading_paused = False
        self.task = self.loop.create_task(self._answer(message))

    async def _answer(self, message: _Message) -> None:
        request_id = ""
        for name, value in message.headers:
            if name.lower() == _REQUEST_ID_LOWER:
                request_id = value
        request_id = request_id_of(request_id)
        if message.too_large:
            answer = error_answer(Failure.TOO_LARGE, Product.ROUTE, "request body over the limit")
            message.keep_alive = False
        else:
            url = message.url
            if not url.startswith(b"/"):
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            path, _, query = url.partition(b"?")
            body = b"".join(message.body) if len(message.body) != 1 else message.body[0]
            request = HttpRequest(message.method, path.decode("latin-1"), query.decode("latin-1"), message.headers,
                                  body, self.peer, f"HTTP/{message.version}", request_id,
                                  server_port=self.server.port)
            structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                answer = await self.server.handler(request)
            except asyncio.CancelledError:
                self.task = None
                raise
            except Exception:  # noqa: BLE001 - the handler answers every error itself; this is a bug
                log.exception("gateway_failed", request_id=request_id)
                answer = error_answer(Failure.INTERNAL, Product.ROUTE)
        # An interim (1xx) status has no final answer after it: closing tells the client so.
        last = not message.keep_alive or (self.closing and not self.pending) or answer.status < 200
        self._write(answer, request_id, not last, head=message.method == "HEAD")
        self.task = None
        if message.too_large:
            self._linger_close()
            return
        if last:
            if self.transport is not None:
                self.transport.close()
            return
        self.last_active = self.loop.time()
        if self.pending:
            self._next()

    def _write(self, answer: HttpAnswer, request_id: str, keep_alive: bool, *, head: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        out = [b"HTTP/1.1 %d %s\r\n" % (answer.status, REASONS.get(answer.status, b"Unknown"))]
        has_date = False
        for name, value in answer.headers:
            if name.lower() == "date":
                has_date = True
            out.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1", "replace")))
        if not has_date:
            out.append(b"Date: %s\r\n" % self.server.date.now())
        if answer.status >= 200 and answer.status != 204:
            out.append(b"Content-Length: %d\r\n" % len(answer.body))
        out.append(b"Apigw-Requestid: %s\r\n" % request_id.encode())
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        if not head and answer.status >= 200 and answer.status not in (204, 304):
            out.append(answer.body)
        self.transport.write(b"".join(out))

    def _fail(self, status: int, cause: str) -> None:
        answer = HttpAnswer(status, [("Content-Type", "application/json")], b'{"message":"Bad Request"}')
        self.pending.clear()
        if self.task is None:
            self._write(answer, request_id_of(""), keep_alive=False)
        log.info("gateway_bad_request", cause=cause, peer=self.peer)
        self._linger_close()
