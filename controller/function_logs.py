"""Every invocation's output kept per function, with Lambda's START / END / REPORT lines.

The invoke pipeline hands each finished invocation to :meth:`FunctionLogs.record`, which only
appends a tuple to a list: one writer task writes them every ``flush_interval`` (buffered
appends, no fsync: a log line lost in a power cut is not worth a disk flush per request). On disk an
invocation is one compact JSON array (:func:`_compact`: its end time, duration, ids, output...),
because the writer runs on the event loop the requests share; readers and followers get the lines
rendered from it (:func:`_render`), each a JSON object ``{"ts", "request_id", "version", "stream",
"message"}`` (and ``trace_id`` when the invocation had one); ``stream`` is ``function`` for what the
function printed and ``platform`` for the lines the platform writes:

    START RequestId: <id> Version: <version>
    END RequestId: <id>
    REPORT RequestId: <id>\\tDuration: <ms> ms\\tBilled Duration: <ms> ms\\tMemory Size: <MB> MB\\t
        Max Memory Used: <MB> MB\\t[Init Duration: <ms> ms\\t]
    XRAY TraceId: <root>\\tSegmentId: <span>\\tSampled: true          (sampled traces only)

Files: ``<root>/<account>/<function>/current.jsonl`` and rotated ``<n>.jsonl`` segments; a segment
is rotated at a quarter of ``max_bytes`` and the oldest are removed so that a function's files stay
under ``max_bytes``. Readers (:meth:`read`) see lines oldest first; followers (:meth:`follow`)
get each flushed batch as it is written.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
import structlog

from easyfaas.trace import TraceContext

log = structlog.get_logger(__name__)

__all__ = ["FunctionLogs", "LogQuery", "format_ts", "report_line"]

CURRENT = "current.jsonl"
_SEGMENT = re.compile(r"(\d+)\.jsonl")
MIN_SEGMENT = 4096
STREAM_FUNCTION = "function"
STREAM_PLATFORM = "platform"


_second_cache: list[Any] = [-1, ""]


def format_ts(epoch: float) -> str:
    """ISO 8601 UTC with milliseconds, the form the lines carry (and that sorts as text)."""
    ms = int(epoch * 1000)
    second = ms // 1000
    cache = _second_cache
    if cache[0] != second:  # formatted once a second: the writer formats thousands a second
        cache[0], cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{cache[1]}.{ms % 1000:03d}Z"


def report_line(request_id: str, duration_ms: float, memory_mb: int, max_memory_mb: int,
                init_ms: float | None) -> str:
    """Lambda's REPORT line: Billed Duration is Duration rounded up to the millisecond."""
    line = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
            f"Billed Duration: {max(1, math.ceil(duration_ms))} ms\tMemory Size: {memory_mb} MB\t"
            f"Max Memory Used: {max_memory_mb} MB\t")
    if init_ms is not None:
        line += f"Init Duration: {init_ms:.2f} ms\t"
    return line


@dataclass
class LogQuery:
    """What a reader asked for; ``since``/``until`` are formatted timestamps (inclusive)."""

    since: str = ""
    until: str = ""
    request_id: str = ""
    limit: int = 1000

    def matches(self, line: dict[str, Any]) -> bool:
        ts = line.get("ts", "")
        if self.since and ts < self.since or self.until and ts > self.until:
            return False
        return not self.request_id or line.get("request_id") == self.request_id


@dataclass
class _Files:
    """One function's log directory as the writer knows it."""

    path: Path
    current_size: int = 0
    segments: list[tuple[int, int]] = field(default_factory=list)  # (number, size), oldest first


# account, function, version, request id, output, duration ms, memory MB, max memory MB, init ms,
# trace, end time
_Record = tuple[str, str, str, str, str, float, int, int, "float | None", "TraceContext | None", float]


class FunctionLogs:
    """The kept logs of every function of this controller; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 16 << 20,
                 flush_interval: float = 0.2) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = max(MIN_SEGMENT, max_bytes // 4)
        self.flush_interval = flush_interval
        self._pending: list[_Record] = []
        self._files: dict[tuple[str, str], _Files] = {}
        self._followers: dict[tuple[str, str], set[asyncio.Queue[list[dict[str, Any]] | None]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="function-logs")

    def end_follows(self) -> None:
        """Followers' streams end now (shutdown), not at the shutdown timeout."""
        for queues in self._followers.values():
            for queue in queues:
                queue.put_nowait(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.flush()
        self.end_follows()

    # ---- the request path ----------------------------------------------------------------------

    def record(self, account: str, function: str, version: str, request_id: str, output: str,
               duration_ms: float, memory_mb: int, max_memory_mb: int, init_ms: float | None,
               trace: TraceContext | None) -> None:
        """One finished invocation (formatted and written later, by the writer task)."""
        self._pending.append((account, function, version, request_id, output, duration_ms, memory_mb, max_memory_mb,
                              init_ms, trace, time.time()))
        if len(self._pending) == 1:
            self._wake.set()

    # ---- writing -------------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_interval)  # gather a batch
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the writer must survive a full disk
                log.exception("function_logs_flush_failed")

    def flush(self) -> None:
        """Format and append what was recorded (synchronous: small buffered appends)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        by_function: dict[tuple[str, str], list[bytes]] = {}
        limit = self.segment_bytes // 4
        for record in pending:
            by_function.setdefault((record[0], record[1]), []).append(_compact(record, limit))
        for key, records in by_function.items():
            try:
                self._append(key, records)
            except OSError as exc:
                self.dropped += len(records)
                log.warning("function_logs_write_failed", account=key[0], function=key[1], error=str(exc))
            followers = self._followers.get(key)
            if followers:
                batch = [line for data in records for line in _parse(data)]
                for queue in followers:
                    queue.put_nowait(batch)

    def _append(self, key: tuple[str, str], records: list[bytes]) -> None:
        files = self._files.get(key)
        if files is None:
            files = self._files[key] = self._scan(key)
        size = files.current_size + sum(map(len, records))
        if size < self.segment_bytes:
            self._write(files, records)  # the usual batch: one write
            self.written += len(records)
            return
        # Written in pieces that fill the current segment, which is rotated when full: a big batch
        # spreads over segments instead of making one larger than the cap.
        piece: list[bytes] = []
        size = files.current_size
        for data in records:
            piece.append(data)
            size += len(data)
            if size >= self.segment_bytes:
                self._write(files, piece)
                self._rotate(files)
                piece, size = [], 0
        if piece:
            self._write(files, piece)
        self.written += len(records)

    @staticmethod
    def _write(files: _Files, piece: list[bytes]) -> None:
        data = b"".join(piece)
        with open(files.path / CURRENT, "ab") as f:
            f.write(data)
        files.current_size += len(data)

    def _scan(self, key: tuple[str, str]) -> _Files:
        path = self.function_dir(*key)
        path.mkdir(parents=True, exist_ok=True)
        files = _Files(path)
        for entry in os.scandir(path):
            m = _SEGMENT.fullmatch(entry.name)
            if m is not None:
                files.segments.append((int(m.group(1)), entry.stat().st_size))
            elif entry.name == CURRENT:
                files.current_size = entry.stat().st_size
        files.segments.sort()
        return files

    def _rotate(self, files: _Files) -> None:
        number = files.segments[-1][0] + 1 if files.segments else 1
        os.rename(files.path / CURRENT, files.path / f"{number}.jsonl")
        files.segments.append((number, files.current_size))
        files.current_size = 0
        # What is kept, plus a new current segment growing to its size, stays within the cap.
        while files.segments and sum(s for _, s in files.segments) + self.segment_bytes > self.max_bytes:
            oldest, _ = files.segments.pop(0)
            (files.path / f"{oldest}.jsonl").unlink(missing_ok=True)

    def function_dir(self, account: str, function: str) -> Path:
        return self.root / account / function

    # ---- reading -------------------------------------------------------------------------------

    async def read(self, account: str, function: str, query: LogQuery) -> list[dict[str, Any]]:
        """The kept lines that match, oldest first, at most ``query.limit``."""
        self.flush()
        return await asyncio.to_thread(self._read_sync, self.function_dir(account, function), query)

    @staticmethod
    def _read_sync(path: Path, query: LogQuery) -> list[dict[str, Any]]:
        try:
            names = [e.name for e in os.scandir(path)]
        except FileNotFoundError:
            return []
        numbered = sorted(int(m.group(1)) for n in names if (m := _SEGMENT.fullmatch(n)))
        out: list[dict[str, Any]] = []
        for name in [*(f"{n}.jsonl" for n in numbered), CURRENT]:
            try:
                with open(path / name, "rb") as f:
                    for raw in f:
                        for line in _parse(raw):
                            if query.matches(line):
                                out.append(line)
                                if len(out) >= query.limit:
                                    return out
            except FileNotFoundError:
                continue  # rotated away while we read
        return out

    @contextmanager
    def follow(self, account: str, function: str) -> Iterator[asyncio.Queue[list[dict[str, Any]] | None]]:
        """A queue of the batches of lines written from now on (None: the stream ends)."""
        queue: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue()
        key = (account, function)
        self._followers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._followers.get(key)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._followers[key]


def _compact(record: _Record, limit: int) -> bytes:
    """The record as written: one JSON array a line (its lines are rendered when read)."""
    _, _, version, request_id, output, duration_ms, memory_mb, max_memory_mb, init_ms, trace, ended = record
    if len(output) > limit:
        output = "\n".join(text[:limit] + " [truncated]" if len(text) > limit else text
                           for text in output.split("\n"))
    fields: tuple[Any, ...] = (ended, duration_ms, version, request_id, output, memory_mb, max_memory_mb, init_ms)
    if trace is not None:
        fields += (trace.trace_id, trace.span_id, trace.sampled)
    try:
        return orjson.dumps(fields) + b"\n"
    except orjson.JSONEncodeError:  # text that is not UTF-8 (a lone surrogate): kept with a replacement
        return orjson.dumps([_utf8(f) if isinstance(f, str) else f for f in fields]) + b"\n"


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _parse(raw: bytes) -> list[dict[str, Any]]:
    """The lines of one written invocation (none for a line cut by a crash mid-write)."""
    try:
        value = orjson.loads(raw)
    except ValueError:
        return []
    if isinstance(value, dict):  # a line written one per object, as earlier versions did
        return [value]
    try:
        return _render(value)
    except (TypeError, ValueError, IndexError):
        return []


def _render(record: list[Any]) -> list[dict[str, Any]]:
    """Lambda's lines of one invocation, from what :func:`_compact` wrote."""
    ended, duration_ms, version, request_id, output, memory_mb, max_memory_mb, init_ms = record[:8]
    trace = TraceContext(record[8], record[9], record[10]) if len(record) > 8 else None
    start_ts, end_ts = format_ts(ended - duration_ms / 1000), format_ts(ended)

    def line(ts: str, stream: str, message: str) -> dict[str, Any]:
        out = {"ts": ts, "request_id": request_id, "version": version, "stream": stream, "message": message}
        if trace is not None:
            out["trace_id"] = trace.xray()
        return out

    lines = [line(start_ts, STREAM_PLATFORM, f"START RequestId: {request_id} Version: {version}")]
    if output:
        lines.extend(line(end_ts, STREAM_FUNCTION, text) for text in output.rstrip("\n").split("\n"))
    lines.append(line(end_ts, STREAM_PLATFORM, f"END RequestId: {request_id}"))
    lines.append(line(end_ts, STREAM_PLATFORM, report_line(request_id, duration_ms, memory_mb, max_memory_mb,
                                                           init_ms)))
    if trace is not None and trace.sampled:
        lines.append(line(end_ts, STREAM_PLATFORM, f"XRAY TraceId: 1-{trace.trace_id[:8]}-{trace.trace_id[8:]}\t"
                                                   f"SegmentId: {trace.span_id}\tSampled: true"))
    return lines
