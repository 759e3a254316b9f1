"""Structured logging for every daemon: structlog, one event per line on stderr.

Request ids are bound with ``structlog.contextvars`` by the HTTP middleware, so every event logged
while a request is being served carries its ``request_id``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def setup_logging(opts: Any = None, *, level: str | None = None, fmt: str | None = None,
                  daemon: str | None = None) -> None:
    level_name = (level or getattr(opts, "log_level", None) or "info").upper()
    fmt = fmt or getattr(opts, "log_format", None) or "json"
    numeric = getattr(logging, level_name, logging.INFO)
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if daemon:
        processors.insert(0, _add_daemon(daemon))
    processors += [structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio log through the stdlib: render their records with the same processors,
    # so they too are one event per line (a traceback becomes the event's "exception" field).
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if daemon:
        pre_chain.insert(0, _add_daemon(daemon))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))


def _add_daemon(name: str) -> Any:
    def processor(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("daemon", name)
        return event

    return processor
