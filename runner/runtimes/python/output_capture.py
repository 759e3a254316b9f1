"""Per-invocation capture of a Python function's output (``print``, ``sys.stderr``, logging).

Handlers run one at a time on the main thread, so one :class:`RequestScope` says which invocation
is running: everything written to ``sys.stdout``/``sys.stderr`` while it runs (by any thread)
lands in that invocation's :class:`LogTail`, returned as the frame's ``logs``; output outside an
invocation goes to the real streams (the runner keeps their tail for init failures). Stdlib only.
"""

from __future__ import annotations

import io
from typing import Any

LOG_TAIL = 4096


class LogTail:
    """The last ``limit`` characters written to it."""

    def __init__(self, limit: int = LOG_TAIL) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.limit:
            joined = "".join(self.parts)[-self.limit:]
            self.parts, self.size = [joined], len(joined)

    def text(self) -> str:
        return "".join(self.parts)[-self.limit:]


class RequestScope:
    """The invocation now running: its request id (``""`` during init) and its log tail."""

    __slots__ = ("request_id", "tail")

    def __init__(self) -> None:
        self.request_id = ""
        self.tail: LogTail | None = None

    def enter(self, request_id: str) -> LogTail:
        self.request_id, self.tail = request_id, LogTail()
        return self.tail

    def leave(self) -> None:
        self.request_id, self.tail = "", None


class CapturingStream(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: writes go to the running invocation's LogTail."""

    def __init__(self, fallback: Any, scope: RequestScope) -> None:
        self._fallback = fallback
        self._scope = scope

    def write(self, text: str) -> int:
        tail = self._scope.tail
        if tail is None:
            if self._fallback is None:
                return len(text)
            written = self._fallback.write(text)
            self._fallback.flush()  # Lambda's runtime flushes every write
            return written
        tail.write(text)
        return len(text)

    def flush(self) -> None:
        if self._fallback is not None and self._scope.tail is None:
            self._fallback.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._fallback is None:
            raise io.UnsupportedOperation("fileno")
        return self._fallback.fileno()

    @property
    def buffer(self) -> "_BinaryView":
        return _BinaryView(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "encoding", "utf-8")

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "errors", "strict")


class _BinaryView(io.RawIOBase):
    """``sys.stdout.buffer`` of a CapturingStream: bytes are decoded and captured like text."""

    def __init__(self, stream: CapturingStream) -> None:
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._stream.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()
