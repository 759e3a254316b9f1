"""The payload format 2.0 event: what API Gateway HTTP APIs and Lambda function URLs send.

Field by field as AWS sends it: header names lower-cased with repeated values comma-joined, the
``Cookie`` header moved to ``cookies``, ``queryStringParameters`` and ``pathParameters`` left out
when empty, ``body`` left out when there is none, binary bodies base64. ``headers`` and
``requestContext.http`` are always objects (Lambda adapters dereference them unconditionally).

Stdlib only.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl

from httptrigger.request import HttpRequest, body_is_text, clf_time

VERSION = "2.0"
DEFAULT_ROUTE_KEY = "$default"
DEFAULT_STAGE = "$default"


def joined_headers(request: HttpRequest) -> tuple[dict[str, str], list[str]]:
    """(lower-cased headers with repeats comma-joined, cookies) as payload 2.0 carries them."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for lower, value in request.forwarded:
        if lower == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[lower] = f"{headers[lower]},{value}" if lower in headers else value
    return headers, cookies


def joined_query(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


def encode_body(request: HttpRequest) -> tuple[str | None, bool]:
    """(body text or None when empty, isBase64Encoded)."""
    if not request.body:
        return None, False
    if body_is_text(request.header("content-type"), request.header("content-encoding"), request.body):
        return request.body.decode("utf-8"), False
    return base64.b64encode(request.body).decode("ascii"), True


def build_event(request: HttpRequest, *, account_id: str, route_key: str = DEFAULT_ROUTE_KEY,
                raw_path: str | None = None, path_parameters: dict[str, str] | None = None,
                api_id: str | None = None, stage: str = DEFAULT_STAGE) -> dict[str, Any]:
    """The event for ``request``; ``raw_path`` overrides the request's (a function URL's rest)."""
    headers, cookies = joined_headers(request)
    path = request.raw_path if raw_path is None else raw_path
    domain = request.host()
    prefix = domain.split(".", 1)[0]
    event: dict[str, Any] = {
        "version": VERSION,
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": request.raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if request.raw_query:
        event["queryStringParameters"] = joined_query(request.raw_query)
    if path_parameters:
        event["pathParameters"] = path_parameters
    event["requestContext"] = {
        "accountId": account_id,
        "apiId": api_id or prefix,
        "domainName": domain,
        "domainPrefix": prefix,
        "http": {
            "method": request.method,
            "path": path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request.request_id,
        "routeKey": route_key,
        "stage": stage,
        "time": clf_time(request.time_epoch_ms),
        "timeEpoch": request.time_epoch_ms,
    }
    body, is_b64 = encode_body(request)
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = is_b64
    return event
