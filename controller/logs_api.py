"""``GET /v1/functions/{ref}/logs``: a function's kept log lines as JSON lines, for its owner.

Query: ``since`` and ``until`` (inclusive; Unix time in milliseconds, or ISO 8601 UTC such as
``2024-05-01T12:00:00Z``), ``request_id``, ``limit`` (1-10000, default 1000: the oldest matching
lines first) and ``follow=1``: after the kept lines the answer stays open (chunked) and carries each
new line as it is written, until the client goes away or the controller shuts down.

The caller is ``X-easyfaas-Account-Id``, as on the invoke route: with simple auth on it must be
given, and a caller who is not the function's owner is refused (403), whether or not simple auth
is on.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from controller.function_logs import FunctionLogs, LogQuery, format_ts
from controller.handlers import INVOKER
from controller.invoke import Invoker, parse_function_ref
from easyfaas.brn import valid_account_id
from easyfaas.errors import InvalidInvokeCaller, InvalidParameterValue
from easyfaas.http import ACCOUNT_ID, REQUEST_ID_KEY

__all__ = ["FUNCTION_LOGS", "add_log_routes"]

FUNCTION_LOGS = web.AppKey("function_logs", FunctionLogs)
MAX_LIMIT = 10000
_FOLLOW_CHECK = 1.0  # how often a quiet follower's connection is checked
_DIGITS = re.compile(r"\d{1,16}")


def _time_param(query: Any, name: str) -> str:
    value = query.get(name, "")
    if not value:
        return ""
    if _DIGITS.fullmatch(value):
        return format_ts(int(value) / 1000)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameterValue(f"{name}: expected Unix time in milliseconds or ISO 8601, not {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return format_ts(parsed.timestamp())


def _query(request: web.Request) -> LogQuery:
    q = request.query
    limit_text = q.get("limit", "1000")
    try:
        limit = int(limit_text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameterValue(f"limit: expected a number from 1 to {MAX_LIMIT}, not {limit_text!r}")
    return LogQuery(since=_time_param(q, "since"), until=_time_param(q, "until"),
                    request_id=q.get("request_id", ""), limit=limit)


async def function_logs(request: web.Request) -> web.StreamResponse:
    invoker: Invoker = request.app[INVOKER]
    logs = request.app[FUNCTION_LOGS]
    caller = request.headers.get(ACCOUNT_ID, "")
    if caller and not valid_account_id(caller):  # as on the invoke route, before the registry sees it
        raise InvalidParameterValue(f"{ACCOUNT_ID}: invalid account id (expected 1-64 characters [A-Za-z0-9_-])")
    if invoker.simple_auth and not caller:
        raise InvalidInvokeCaller(f"missing {ACCOUNT_ID} header")
    brn = parse_function_ref(request.match_info["ref"], None, caller)
    query = _query(request)
    follow = request.query.get("follow", "") in ("1", "true")
    fn = await invoker.registry.get_function(brn, account_id=caller, request_id=request.get(REQUEST_ID_KEY, ""))
    owner = fn.record.Configuration.Uid
    if (caller or invoker.simple_auth) and caller != owner:
        raise InvalidInvokeCaller(f"owner id {owner} caller id {caller}")
    account, name = brn.account, brn.name
    if not follow:
        lines = await logs.read(account, name, query)
        return web.Response(body=_jsonl(lines), content_type="application/x-ndjson")

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    with logs.follow(account, name) as batches:  # before reading: no line falls between the two
        kept = await logs.read(account, name, query)
        await response.prepare(request)
        if kept:
            await response.write(_jsonl(kept))
        live = LogQuery(request_id=query.request_id)
        while True:
            try:
                batch = await asyncio.wait_for(batches.get(), _FOLLOW_CHECK)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            if batch is None:
                break
            out = [line for line in batch if live.matches(line) and not _seen(line, kept)]
            if out:
                try:
                    await response.write(_jsonl(out))
                except ConnectionError:
                    break
            kept = []
    if request.transport is not None and not request.transport.is_closing():
        await response.write_eof()
    return response


def _seen(line: dict[str, Any], kept: list[dict[str, Any]]) -> bool:
    # A batch flushed while the kept lines were read is in both.
    return bool(kept) and line in kept


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines).encode()


def add_log_routes(app: web.Application, logs: FunctionLogs) -> None:
    app[FUNCTION_LOGS] = logs
    app.router.add_get("/v1/functions/{ref}/logs", function_logs)
