"""Lambda's root-logger handler for Python functions: its line formats and log-level setting.

Lambda's Python runtime gives the root logger one handler, so ``logging.getLogger().info(...)``
reaches the function's log once the level allows it. Text lines are
``[LEVEL]\\t<UTC time with ms>Z\\t<request id>\\t<message>``; ``AWS_LAMBDA_LOG_FORMAT=JSON`` gives
one JSON object per record instead; ``AWS_LAMBDA_LOG_LEVEL`` sets the root level (``TRACE`` is
``DEBUG``); without it Python's default (WARNING) applies, as in Lambda. Stdlib only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any, Mapping

from runner.runtimes.python.output_capture import RequestScope

TEXT_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# The attributes every LogRecord has: anything else came from ``extra=`` and goes into JSON lines.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "aws_request_id", "tenant_id"}


class RequestIdFilter(logging.Filter):
    """Puts the running invocation's request id on every record (``""`` during init)."""

    def __init__(self, scope: RequestScope) -> None:
        super().__init__()
        self.scope = scope

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.scope.request_id
        return True


class TextFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, DATE_FORMAT)


class JsonFormatter(logging.Formatter):
    """Lambda's JSON log line: timestamp, level, message, logger, requestId (+ error fields, extras)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": logging.getLevelName(record.levelno // 10 * 10 if record.levelno >= 10 else record.levelno),
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": getattr(record, "aws_request_id", None) or None,
        }
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line.update({"errorType": type(exc).__name__, "errorMessage": str(exc),
                         "stackTrace": traceback.format_tb(exc.__traceback__),
                         "location": f"{record.pathname}:{record.funcName}:{record.lineno}"})
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                line[key] = value
        return json.dumps({k: v for k, v in line.items() if v is not None}, default=str, ensure_ascii=False) + "\n"


class StdoutHandler(logging.Handler):
    """Writes formatted records to whatever ``sys.stdout`` is now (the invocation's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never fail the handler
            self.handleError(record)


def json_format(env: Mapping[str, str]) -> bool:
    return env.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"


def install(scope: RequestScope, env: Mapping[str, str]) -> logging.Handler:
    """Give the root logger Lambda's handler, format and level; returns the handler."""
    handler = StdoutHandler()
    handler.addFilter(RequestIdFilter(scope))
    handler.setFormatter(JsonFormatter() if json_format(env) else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = env.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level:
        try:
            root.setLevel("DEBUG" if level == "TRACE" else level)
        except (ValueError, TypeError):
            pass  # a name Python does not know: keep the default, as Lambda does
    return handler
