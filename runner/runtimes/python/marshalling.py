"""Events in, results out: how a handler's event is decoded and its result encoded.

A string result is returned verbatim as ``text/plain; charset=utf-8`` (the frame contract); bytes
as ``application/unknown`` (Lambda's Python runtime passes bytes through raw); anything else is
JSON, ``Decimal`` written as a number and non-ASCII text escaped before Python 3.12 (not from
3.12 on), as Lambda's marshaller does. Stdlib only.
"""

from __future__ import annotations

import decimal
import json
import sys
from typing import Any

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
BINARY = "application/unknown"


class MarshalError(Exception):
    """The result cannot be encoded; the message says why (Lambda's wording)."""


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# One encoder for every result (json.dumps with arguments would build one per call).
_ENCODER = json.JSONEncoder(default=_default, ensure_ascii=sys.version_info < (3, 12))


def unmarshal_event(raw: str) -> Any:
    """The event as the handler sees it: its JSON value, or the text itself when it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def marshal_result(result: Any) -> tuple[str, str]:
    """(result text, content type); raises MarshalError when it cannot be encoded."""
    if isinstance(result, str):
        return result, TEXT
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result).decode("utf-8", "replace"), BINARY
    try:
        return _ENCODER.encode(result), JSON
    except (TypeError, ValueError) as exc:
        raise MarshalError(f"Unable to marshal response: {exc}") from None
