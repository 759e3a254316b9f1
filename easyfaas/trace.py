"""Trace context of an invocation: W3C ``traceparent`` in, X-Ray's header for the function.

The caller's ``traceparent`` (``00-<32 hex trace>-<16 hex parent>-<2 hex flags>``) is continued:
the controller's invocation is a new span of that trace, passed to the function as X-Ray's
``Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`` (what Lambda puts in
``_X_AMZN_TRACE_ID``; the first 8 hex digits of a W3C trace id are X-Ray's epoch part) and
returned to the caller as the response's ``traceparent``. A missing or malformed header starts a
new trace (its id begins with the time, as X-Ray's do), as W3C says a receiver restarts one; it is
not sampled, as Lambda's own traces of untraced callers are not (the caller decides sampling).

Stdlib only.
"""

from __future__ import annotations

import random
import re
import time

__all__ = ["TRACEPARENT", "TraceContext", "continue_trace", "parse_traceparent"]

TRACEPARENT = "traceparent"

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# Ids need to be unique, not secret: random's generator costs a tenth of os.urandom per call.
_getrandbits = random.Random().getrandbits
_ONE_SPAN = "0" * 15 + "1"


class TraceContext:
    """One span of a trace: its trace id, its own span id and whether it is sampled."""

    __slots__ = ("trace_id", "span_id", "sampled")

    def __init__(self, trace_id: str, span_id: str, sampled: bool) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def xray(self) -> str:
        """X-Ray's trace header of this span (Lambda's ``_X_AMZN_TRACE_ID``)."""
        t = self.trace_id
        return f"Root=1-{t[:8]}-{t[8:]};Parent={self.span_id};Sampled={'1' if self.sampled else '0'}"


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace id, parent id, sampled) of a valid version-00-compatible header, else None."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def _span_id() -> str:
    return f"{_getrandbits(64) or 1:016x}"


def continue_trace(traceparent: str | None) -> TraceContext:
    """The invocation's span: a child of ``traceparent``, or the root of a new trace."""
    if traceparent:
        parsed = parse_traceparent(traceparent)
        if parsed is not None:
            trace_id, _, sampled = parsed
            return TraceContext(trace_id, _span_id(), sampled)
    # X-Ray's layout: the first 8 hex digits are the Unix time in seconds. The trace's random part
    # and the span id come from one draw: most invocations start a trace, once per request.
    ids = f"{int(time.time()):08x}{_getrandbits(160):040x}"
    span_id = ids[32:]
    return TraceContext(ids[:32], span_id if span_id != _ZERO_SPAN else _ONE_SPAN, False)
