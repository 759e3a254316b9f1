"""The runtime channel's framing: 4-byte big-endian length, then one UTF-8 JSON object.

This module is the single definition of the controller ↔ language-runtime wire format (the Node.js
bootstrap mirrors it in `runner/runtimes/nodejs/bootstrap.js`). Stdlib only, because the Python
runtime imports it inside the sandbox; the asyncio helpers are used by the controller.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import socket
import struct
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024


class FrameError(Exception):
    """The peer sent something that is not a valid frame, or closed the stream mid-frame."""


# One encoder for every frame: json.dumps with arguments builds a new JSONEncoder on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# ... and JSONEncoder.encode builds a new C encoder on each call (half its time for a frame), so
# the C encoder is made once. Without a markers dict: a frame holds no containers that could
# refer to themselves, and a markers dict left filled by a failed call would fail the next one.
_c_encode = (json.encoder.c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                                         False, False, True)
             if json.encoder.c_make_encoder is not None else None)
# The decoder's C scanner called directly: json.loads also sniffs the bytes' encoding and matches
# whitespace around the value with regular expressions, half its time for a frame.
_scan = json.scanner.make_scanner(json.JSONDecoder())


def encode(message: dict[str, Any]) -> bytes:
    body = ("".join(_c_encode(message, 0)) if _c_encode is not None else _ENCODER.encode(message)).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode()
        try:
            message, end = _scan(text, 0)
        except StopIteration:  # not a JSON value at its first character (leading space, garbage)
            end = -1
        if end != len(text):
            message = json.loads(text)  # whitespace around the value, or the error to report
    except ValueError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from


def split_frames(buf: bytearray, take: Callable[[bytes], bool]) -> None:
    """Hand the body of each whole frame at the head of ``buf`` to ``take``, taking it out of
    ``buf``, until ``take`` answers False or no whole frame is left (a partial one stays for the
    next read).

    The incremental readers of both ends (the controller's runtime channel, the Python runtime's
    epoll loop) split what they read with it. A callback rather than a frame per call: on the warm
    path this loop runs once per read, and a call per frame (plus the one that finds none) cost a
    tenth more than the loop written out in each reader. Raises FrameError at a length over
    MAX_FRAME, after the frames before it were taken: the stream cannot be read on past it.
    """
    while len(buf) >= _HEADER_SIZE:
        (length,) = _unpack_header(buf)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        end = _HEADER_SIZE + length
        if len(buf) < end:
            return
        body = bytes(buf[_HEADER_SIZE:end])
        del buf[:end]
        if not take(body):
            return


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    remaining = n
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            if remaining == n:
                return None
            raise FrameError("connection closed mid-frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking read of one frame; None on a clean EOF between frames."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    body = _recv_exact(sock, length) if length else b""
    if body is None:
        raise FrameError("connection closed mid-frame")
    return decode_body(body)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


async def read_frame(reader: Any) -> dict[str, Any] | None:
    """asyncio.StreamReader variant of recv_frame."""
    import asyncio

    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("connection closed mid-frame") from None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("connection closed mid-frame") from None
    return decode_body(body)


# ---- the invoke frame bodies ------------------------------------------------------------------
# The one definition of what a request and a response frame carry; the controller builds
# InvokeRequest and reads InvokeResponse, the Python runtime the reverse, and the Node.js bootstrap
# mirrors the same keys (tests/test_frames_contract.py checks that it agrees).

#: ``InvokeResponse.content_type`` of a handler that returned a string (the string verbatim)
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"
#: ``InvokeResponse.content_type`` of any other result (its JSON)
CONTENT_TYPE_JSON = "application/json"


@dataclass(slots=True)
class InvokeRequest:
    """controller → runtime: one invocation.

    ``id`` is the frame's id (unique per controller, echoed in the response); ``request_id`` the
    invocation's request id (what the caller got in ``X-easyfaas-Request-Id``); ``event`` the request
    body as text (``"{}"`` when empty); ``deadline_ms`` the Unix time in ms at which the call is cut;
    ``log`` asks for the captured output in the response. The optional fields are left out of the
    frame when empty.
    """

    id: str
    event: str
    deadline_ms: int
    log: bool = False
    request_id: str = ""
    function_arn: str = ""
    trace_id: str = ""
    client_context: str = ""
    identity: str = ""

    def to_wire(self) -> dict[str, Any]:
        # Written out key by key: this runs once per invocation on the warm path.
        body: dict[str, Any] = {"id": self.id, "event": self.event, "deadline_ms": self.deadline_ms,
                                "log": self.log, "request_id": self.request_id}
        if self.function_arn:
            body["function_arn"] = self.function_arn
        if self.trace_id:
            body["trace_id"] = self.trace_id
        if self.client_context:
            body["client_context"] = self.client_context
        if self.identity:
            body["identity"] = self.identity
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> InvokeRequest:
        """Tolerant read: a missing or mistyped field takes its default (the runtime must answer).

        ``request_id`` defaults to ``id`` (a request frame written without one).
        """
        frame_id = _text(body.get("id"))
        deadline = body.get("deadline_ms")
        event = body.get("event")
        return cls(id=frame_id, event=event if isinstance(event, str) else "{}",
                   deadline_ms=deadline if isinstance(deadline, int) and not isinstance(deadline, bool) else 0,
                   log=body.get("log") is True, request_id=_text(body.get("request_id")) or frame_id,
                   function_arn=_text(body.get("function_arn")), trace_id=_text(body.get("trace_id")),
                   client_context=_text(body.get("client_context")), identity=_text(body.get("identity")))


@dataclass(slots=True)
class InvokeResponse:
    """runtime → controller: the outcome of one InvokeRequest (same ``id``).

    ``ok``: ``result`` is the handler's result as text with its ``content_type`` (a string result
    verbatim as CONTENT_TYPE_TEXT, anything else its JSON as CONTENT_TYPE_JSON).
    Not ok: ``error`` is a function error object (:class:`FunctionError`'s wire form,
    ``{"errorMessage", "errorType", "stackTrace"}``); ``fatal`` says the runtime cannot serve again
    (the controller recycles the sandbox). ``logs`` is present only when asked.
    ``memory_peak_kb``: the runtime process's high-water resident memory so far, in KiB (its own
    plus its children's, as the runtime can see them): the invocation's "Max Memory Used". Left out
    of the frame when 0 (unknown).
    """

    id: str
    ok: bool
    result: str = ""
    content_type: str = ""
    error: dict[str, Any] | None = None
    fatal: bool = False
    logs: str | None = None
    memory_peak_kb: int = 0

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "ok": self.ok}
        if self.ok:
            body["result"] = self.result
            body["content_type"] = self.content_type or CONTENT_TYPE_TEXT
        else:
            body["error"] = self.error or {}
            body["fatal"] = self.fatal
        if self.logs is not None:
            body["logs"] = self.logs
        if self.memory_peak_kb:
            body["memory_peak_kb"] = self.memory_peak_kb
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> InvokeResponse:
        """Strict read: raises FrameError when a field has the wrong type (a broken runtime).

        Only ``ok`` (and ``error`` when not ok) must be present; a missing ``content_type`` of a
        result is CONTENT_TYPE_TEXT, a missing ``memory_peak_kb`` 0.
        """
        ok = body.get("ok")
        if not isinstance(ok, bool):
            raise FrameError("response frame without a boolean 'ok'")
        error = body.get("error")
        if not ok and not isinstance(error, dict):
            raise FrameError("error response frame without an 'error' object")
        result = body.get("result", "")
        logs = body.get("logs")
        if not isinstance(result, str) or (logs is not None and not isinstance(logs, str)):
            raise FrameError("response frame with a non-text 'result' or 'logs'")
        content_type = body.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise FrameError("response frame with a non-text 'content_type'")
        memory = body.get("memory_peak_kb", 0)
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 0:
            raise FrameError("response frame with a 'memory_peak_kb' that is not a non-negative integer")
        return cls(id=_text(body.get("id")), ok=ok, result=result,
                   content_type=content_type or (CONTENT_TYPE_TEXT if ok else ""),
                   error=error if isinstance(error, dict) else None, fatal=body.get("fatal") is True, logs=logs,
                   memory_peak_kb=memory)


# ---- function errors --------------------------------------------------------------------------

class FunctionErrorType:
    """The ``errorType`` values the platform itself gives a function error (not a FaasError: the
    function's outcome, answered with ``X-easyfaas-Function-Error: Unhandled``). A handler's own
    exception is reported under its class name instead."""

    # made by the controller
    TIMEOUT = "Sandbox.Timedout"                 # no answer within the function's Timeout
    SANDBOX_FAILED = "Sandbox.Failed"            # the sandbox was lost mid-request
    EXIT = "Runtime.ExitError"                   # the runtime process ended mid-request
    OUT_OF_MEMORY = "Runtime.OutOfMemory"        # ... killed at the function's memory limit
    RUNTIME_ERROR = "Runtime.Error"              # the runtime failed without saying how
    # made by the runner and the funclet when a runtime cannot start
    INIT = "Runtime.InitError"
    SANDBOX_ERROR = "Runtime.SandboxError"
    EXEC = "Runtime.ExecError"
    BUSY = "Runtime.Busy"
    INVALID_CONFIGURATION = "Runtime.InvalidConfiguration"
    # made by the language runtimes
    MALFORMED_HANDLER_NAME = "Runtime.MalformedHandlerName"
    HANDLER_NOT_FOUND = "Runtime.HandlerNotFound"
    IMPORT_MODULE = "Runtime.ImportModuleError"
    USER_CODE_SYNTAX = "Runtime.UserCodeSyntaxError"
    MARSHAL = "Runtime.MarshalError"
    RESPONSE_TOO_LARGE = "Runtime.ResponseSizeTooLarge"
    RUNTIME_TIMEOUT = "Runtime.Timeout"          # the exec runtime's own per-request timeout
    INTERNAL = "Runtime.InternalError"


@dataclass(slots=True)
class FunctionError:
    """A function error object: ``{"errorMessage", "errorType"[, "stackTrace"]}`` (Lambda's shape).

    The body of a function error's HTTP answer, ``InvokeResponse.error`` and a warmup's
    ``InitError``. ``stack_trace`` None leaves the key out (the platform's own errors have none).
    """

    message: str
    type: str
    stack_trace: list[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errorMessage": self.message, "errorType": self.type}
        if self.stack_trace is not None:
            body["stackTrace"] = self.stack_trace
        return body

    @classmethod
    def from_wire(cls, body: Any) -> FunctionError:
        """Tolerant read: what a runtime sent, whatever it is, as a function error."""
        if not isinstance(body, dict):
            return cls(_text(body) or "the function failed", FunctionErrorType.RUNTIME_ERROR)
        stack = body.get("stackTrace")
        return cls(_text(body.get("errorMessage")), _text(body.get("errorType")) or FunctionErrorType.RUNTIME_ERROR,
                   [_text(line) for line in stack] if isinstance(stack, list) else None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))
