"""The controller's listener: invocations parsed and answered below aiohttp, the rest handed to it.

An invocation is the one request the controller serves thousands of times a second, and aiohttp's
per-request machinery (request and response objects, router, middlewares, payload streams) costs
about as much CPU as the whole rest of the warm path (docs/performance.md). So the listening socket
belongs to :class:`FrontDoor`, whose connections parse HTTP/1.1 with httptools (llhttp, the parser
Node.js uses) and run :meth:`controller.invoke.Invoker.invoke` directly.

Who owns a connection is decided by its first request line, before anything is parsed: a
``POST /v1/functions/<ref>/invocations`` keeps it here; anything else (the other routes, garbage,
TLS on the plain port) hands the socket, with the bytes read so far, to aiohttp's own protocol, so
those requests get exactly the aiohttp application's answers. Should a request of another route
follow invocations on the same connection, it is re-serialised (method, URL, headers, body) and the
connection handed over before it; pipelined requests behind such a request cannot be carried over
and get a 400 with the connection closed.

Requests on one connection are answered in order, one at a time (HTTP/1.1 has no other way);
reading pauses while a few are waiting. ``Expect: 100-continue`` is honoured, a body announced
larger than ``--max-body-size`` is refused with 413 (and never buffered; the connection then
closes), and a connection idle for the keep-alive timeout is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
import structlog
from aiohttp import web_protocol
from multidict import CIMultiDict

from controller.invoke import InvokeReply, Invoker
from easyfaas.auth import WWW_AUTHENTICATE, Authenticator
from easyfaas.errors import FaasError, RequestTooLarge, ServiceError, Unauthenticated
from easyfaas.http import REQUEST_ID, request_id_of
from easyfaas.http1_listener import KEEPALIVE_TIMEOUT, MAX_QUEUED, REASONS, Http1Connection, Http1Listener

log = structlog.get_logger(__name__)

_INVOKE_PREFIX = b"POST /v1/functions/"
_INVOKE_SUFFIX = b"/invocations"
_FIRST_LINE_MAX = 8192
_EMPTY_QUERY: dict[str, str] = {}


class _Message:
    __slots__ = ("method", "url", "headers", "body", "size", "keep_alive", "version", "invoke", "too_large",
                 "queued")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.version = "1.1"
        self.invoke: tuple[str, str] | None = None  # (function reference, query string)
        self.too_large = False
        self.queued = False


def _invoke_target(method: bytes, url: bytes) -> tuple[str, str] | None:
    """(reference, query) when the request is an invocation, else None."""
    if method != b"POST":
        return None
    path, _, query = url.partition(b"?")
    if not path.startswith(b"/v1/functions/") or not path.endswith(_INVOKE_SUFFIX):
        return None
    ref = path[len(b"/v1/functions/"):-len(_INVOKE_SUFFIX)]
    if not ref or b"/" in ref:
        return None
    try:
        return _unquote(ref.decode("ascii")), query.decode("ascii")
    except UnicodeDecodeError:
        return None


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)


def _parse_query(query: str) -> dict[str, str]:
    if not query:
        return _EMPTY_QUERY
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query, keep_blank_values=True))


class FrontDoor(Http1Listener):
    """The listening socket of the controller; see the module docstring."""

    def __init__(self, invoker: Invoker, aiohttp_protocol: Callable[[], web_protocol.RequestHandler], *,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT, auth: Authenticator | None = None,
                 ssl_context: Any = None) -> None:
        self.invoker = invoker
        self.auth = auth  # None: no keys required
        self.ssl_context = ssl_context
        self.aiohttp_protocol = aiohttp_protocol
        super().__init__(keepalive_timeout)
        self.handed_over = 0

    async def start(self, host: str, port: int) -> None:
        await self._listen(lambda loop: _Connection(self, loop), host, port, self.ssl_context)

    @property
    def sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server is not None else []


class _Connection(Http1Connection):
    def __init__(self, door: FrontDoor, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(door, loop)
        self.door = door
        self.parser: httptools.HttpRequestParser | None = None
        self.sniffed = b""

    # ---- connection ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.last_active = self.loop.time()
        if self.parser is None:
            self.sniffed += data
            line_end = self.sniffed.find(b"\r\n")
            if line_end < 0:
                head = self.sniffed[:len(_INVOKE_PREFIX)]
                if len(self.sniffed) < _FIRST_LINE_MAX and _INVOKE_PREFIX.startswith(head) or \
                        self.sniffed.startswith(_INVOKE_PREFIX) and len(self.sniffed) < _FIRST_LINE_MAX:
                    return  # not a whole first line yet, and it may still be an invocation
                self._hand_over(self.sniffed)
                return
            parts = self.sniffed[:line_end].split(b" ")
            if len(parts) != 3 or _invoke_target(parts[0], parts[1]) is None:
                self._hand_over(self.sniffed)
                return
            data, self.sniffed = self.sniffed, b""
            self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported on the invoke route")
            return
        except httptools.HttpParserError as exc:
            self._fail(400, f"the request is not valid HTTP: {exc}")
            return
        if self.pending and self.task is None:
            self._next()

    # ---- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Message()

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        message = self.current
        assert message is not None and self.parser is not None
        message.method = self.parser.get_method()
        message.version = self.parser.get_http_version()
        message.keep_alive = self.parser.should_keep_alive()
        message.invoke = _invoke_target(message.method, message.url)
        continue_expected = False
        for name, value in message.headers:
            lower = name.lower()
            if lower == b"content-length" and message.invoke is not None:
                try:
                    self.door.invoker.check_length(int(value))
                except RequestTooLarge:
                    message.too_large = True
                except ValueError:
                    pass  # llhttp has refused a malformed length already
            elif lower == b"expect" and value.lower() == b"100-continue":
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
        if message.invoke is not None and message.size > self.door.invoker.max_body_size:
            self._refuse(message)  # chunked, so no length was announced
            return
        message.body.append(body)

    # ---- answering -------------------------------------------------------------------------------

    def _next(self) -> None:
        """Start answering the oldest parsed request (called when none is being answered)."""
        if not self.pending or self.transport is None or self.transport.is_closing():
            return
        message = self.pending[0]
        if message.invoke is None:
            self._hand_over_message()
            return
        self.pending.popleft()
        if self.reading_paused and len(self.pending) < MAX_QUEUED // 2:
            self.transport.resume_reading()
            self.reading_paused = False
        self.task = self.loop.create_task(self._answer(message))

    async def _answer(self, message: _Message) -> None:
        headers = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in message.headers)
        request_id = request_id_of(headers.get(REQUEST_ID, ""))
        assert message.invoke is not None
        ref, query = message.invoke
        if message.too_large:
            reply = InvokeReply.of_error(
                RequestTooLarge(f"the request body is larger than the limit of {self.door.invoker.max_body_size} "
                                f"bytes"), {REQUEST_ID: request_id})
            message.keep_alive = False
        else:
            body = b"".join(message.body) if len(message.body) != 1 else message.body[0]
            # This task's context is its own copy: the binding needs no reset.
            structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                if self.door.auth is not None:
                    await self.door.auth.admit("POST", message.url.decode("latin-1"), headers)
                reply = await self.door.invoker.invoke(ref, _parse_query(query), headers, body, request_id)
            except Unauthenticated as err:
                reply = InvokeReply.of_error(err, {REQUEST_ID: request_id, **WWW_AUTHENTICATE})
            except FaasError as err:  # the key may not do this
                reply = InvokeReply.of_error(err, {REQUEST_ID: request_id})
            except asyncio.CancelledError:
                self.task = None
                raise
            except Exception:  # noqa: BLE001 - invoke() answers every error itself; this is a bug
                log.exception("front_door_failed", request_id=request_id)
                reply = InvokeReply.of_error(ServiceError(f"internal error while handling request {request_id}"),
                                             {REQUEST_ID: request_id})
        # Closing (shutdown, or the client half-closed): what was already received is answered first.
        last = not message.keep_alive or (self.closing and not self.pending)
        self._write(reply, not last)
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

    def _write(self, reply: InvokeReply, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        out = [b"HTTP/1.1 %d %s\r\n" % (reply.status, REASONS.get(reply.status, b"Unknown"))]
        for name, value in reply.headers.items():
            out.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1", "replace")))
        out.append(b"Content-Length: %d\r\nDate: %s\r\nServer: easyfaas\r\n" % (len(reply.body), self.door.date.now()))
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        out.append(reply.body)
        self.transport.write(b"".join(out))

    def _fail(self, status: int, cause: str) -> None:
        """A request we cannot parse: answer the FaasError JSON and close."""
        err = FaasError(cause, message="The request could not be parsed")
        err.code, err.status = "InvalidRequestException", status
        self.pending.clear()
        if self.task is None:
            self._write(InvokeReply.of_error(err, {REQUEST_ID: request_id_of("")}), keep_alive=False)
        self._linger_close()

    # ---- handing a connection to aiohttp -------------------------------------------------------

    def _hand_over_message(self) -> None:
        """The next request is for another route: give aiohttp the connection, from that request on."""
        if self.current is not None or len(self.pending) > 1:
            # A request behind it was (partly) read already: its bytes are gone from us.
            self._fail(400, "pipelined requests after a request that is not an invocation are not supported "
                            "on this connection; send them one at a time")
            return
        message = self.pending.popleft()
        self._hand_over(_serialise(message))

    def _hand_over(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.door.connections.discard(self)
        self.door.handed_over += 1
        self.transport = None
        protocol = self.door.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.reading_paused:
            transport.resume_reading()
        if data:
            protocol.data_received(data)


def _serialise(message: _Message) -> bytes:
    """The request again as bytes, with its body de-chunked and a Content-Length."""
    body = b"".join(message.body)
    lines = [b"%s %s HTTP/%s\r\n" % (message.method, message.url, message.version.encode())]
    for name, value in message.headers:
        if name.lower() in (b"content-length", b"transfer-encoding", b"expect"):
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    return b"".join(lines) + body
