"""The little HTTP/1.1 the Runtime API needs: incremental request parsing and response rendering.

Requests arrive on a keep-alive connection from the function's ``bootstrap`` (any HTTP client:
curl, AWS's runtime interface clients, a shell script); bodies come with ``Content-Length`` or
chunked, and a body larger than the caller's limit is refused as soon as its size is known,
without buffering it. Stdlib only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024
REASONS = {100: "Continue", 200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Request Entity Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error"}


class BadRequest(Exception):
    """The bytes are not an HTTP/1.1 request we can read; ``status`` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyTooLarge(Exception):
    """The request's body exceeds the limit; ``size`` is its size as far as known."""

    def __init__(self, size: int) -> None:
        super().__init__(f"body of {size} bytes")
        self.size = size


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


class RequestParser:
    """Feed bytes, take complete requests; ``head`` is the last parsed head awaiting its body."""

    def __init__(self, max_body: int) -> None:
        self.buffer = bytearray()
        self.max_body = max_body
        self.head: Request | None = None
        self._length = -1  # Content-Length of the pending body, -1 for chunked
        self._chunks = bytearray()
        self.continue_sent = False

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def wants_continue(self) -> bool:
        """True once for a head that asked for ``Expect: 100-continue`` and whose body is not here."""
        if self.head is None or self.continue_sent:
            return False
        if self.head.headers.get("expect", "").lower() != "100-continue":
            return False
        self.continue_sent = True
        return True

    def next(self) -> Request | None:
        """The next complete request, or None until more bytes come; raises BadRequest, BodyTooLarge."""
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise BadRequest(431, "request head too large")
                return None
            self.head = _parse_head(bytes(self.buffer[:end]))
            del self.buffer[:end + 4]
            self.continue_sent = False
            self._chunks = bytearray()
            self._length = _body_length(self.head.headers)
            if self._length > self.max_body:
                raise BodyTooLarge(self._length)
        body = self._read_body()
        if body is None:
            return None
        request, self.head = self.head, None
        request.body = body
        return request

    def _read_body(self) -> bytes | None:
        if self._length >= 0:
            if len(self.buffer) < self._length:
                return None
            body = bytes(self.buffer[:self._length])
            del self.buffer[:self._length]
            return body
        while True:  # chunked
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return None
            try:
                size = int(bytes(self.buffer[:line_end]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                trailer_end = self.buffer.find(b"\r\n\r\n", line_end)
                if self.buffer[line_end:line_end + 4] == b"\r\n\r\n":
                    trailer_end = line_end
                if trailer_end < 0:
                    return None
                del self.buffer[:trailer_end + 4]
                return bytes(self._chunks)
            if len(self._chunks) + size > self.max_body:
                raise BodyTooLarge(len(self._chunks) + size)
            if len(self.buffer) < line_end + 2 + size + 2:
                return None
            self._chunks += self.buffer[line_end + 2:line_end + 2 + size]
            del self.buffer[:line_end + 2 + size + 2]


def _parse_head(head: bytes) -> Request:
    text = head.decode("latin-1")
    request_line, _, rest = text.partition("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        raise BadRequest(400, f"unsupported protocol {version!r}")
    headers: dict[str, str] = {}
    if rest:
        for line in rest.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep or not name or name[0].isspace() or name[-1].isspace():
                raise BadRequest(400, f"malformed header line {line[:60]!r}")
            headers[name.lower()] = value.strip()
    return Request(method, target.split("?", 1)[0], headers)


def _body_length(headers: dict[str, str]) -> int:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return -1
    try:
        length = int(headers.get("content-length", "0") or "0")
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if length < 0:
        raise BadRequest(400, "bad Content-Length")
    return length


def render(status: int, body: bytes, headers: dict[str, str] | None = None,
           content_type: str = "application/json", close: bool = False) -> bytes:
    """One response, head and body in one buffer: it goes out in one write (one segment)."""
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n")
    if headers:
        head += "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1", "replace") + body


def render_json(status: int, payload: dict[str, Any], close: bool = False) -> bytes:
    return render(status, json.dumps(payload).encode(), close=close)


def render_error(status: int, error_type: str, message: str, close: bool = False) -> bytes:
    """Lambda's Runtime API error answer: ``{"errorMessage", "errorType"}``."""
    return render_json(status, {"errorMessage": message, "errorType": error_type}, close=close)


#: The answer to an accepted invocation response or error on a kept-alive connection (each call
#: sends it, so it is rendered once).
ACCEPTED = render_json(202, {"status": "OK"})
