"""aiohttp pieces shared by the public HTTP services (stubs, controller, funclet, httptrigger).

* :data:`REQUEST_ID` & co.: the invoke API's vocabulary (defined in easyfaas/http_vocabulary.py,
  which clients import without aiohttp), re-exported here.
* :func:`request_id_middleware`: every request gets an external request id (taken from
  ``X-easyfaas-Request-Id`` or a new UUID), bound into structlog's context and echoed back.
* :func:`error_middleware`: every error leaves as the FaasError JSON body; tracebacks go to the log,
  never to the client.
* :func:`read_json`: bounded JSON body reading with the platform's errors.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import structlog
from aiohttp import web, web_protocol

from easyfaas.errors import (
    FaasError,
    InvalidParameterValue,
    InvalidRequest,
    InvalidRequestContent,
    MethodNotAllowed,
    RequestTooLarge,
    ResourceNotFound,
    ServiceError,
)

log = structlog.get_logger(__name__)

from easyfaas.http_vocabulary import (  # noqa: F401 - re-exported: the services import them from here
    REQUEST_ID,
    ACCOUNT_ID,
    FUNCTION_ERROR,
    EXEC_TIME,
    LOG_RESULT,
    LOG_TYPE,
    LOG_TO_BODY,
    INVOKE_TYPE,
    INVOKE_TYPE_EVENT,
    INVOKE_TYPE_REQUEST_RESPONSE,
    LOG_TYPE_TAIL,
    FUNCTION_ERROR_UNHANDLED,
    QUERY_QUALIFIER,
    QUERY_LOG_TYPE,
    QUERY_LOG_TO_BODY,
    CONTENT_TYPE,
    JSON_CONTENT_TYPE,
)

#: where request_id_middleware stores the request's external id
REQUEST_ID_KEY = web.RequestKey("request_id", str)

# A caller-supplied id is echoed in headers and logs: keep it short and printable.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_READ_CHUNK = 64 * 1024


def error_response(err: FaasError, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON response for a platform error."""
    return web.json_response(err.to_dict(), status=err.status, headers=headers)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> FaasError:
    if isinstance(exc, web.HTTPNotFound):
        return ResourceNotFound(f"no route for {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"method {exc.method} is not allowed for {request.path}; allowed: {allowed}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return RequestTooLarge("the request body is too large")
    text = exc.text or ""
    return FaasError.of(re.sub(r"[^A-Za-z]", "", exc.reason) + "Exception", exc.status, exc.reason,
                        "" if text == f"{exc.status}: {exc.reason}" else text)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except FaasError as err:
        if err.status >= 500:
            log.warning("request_failed", method=request.method, path=request.path, code=err.code, cause=err.cause)
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = _from_http_exception(exc, request)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(err, headers=headers)
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return error_response(
            ServiceError(f"internal error while handling request {request.get(REQUEST_ID_KEY, '')}".rstrip())
        )


def request_id_of(incoming: str) -> str:
    """The request's external id: the caller's, when it is a sane one, else a new UUID.

    A request id names a request in logs and headers; it is no secret, so it comes from the
    process's PRNG rather than a getrandom() system call per request as uuid4() would.
    """
    if incoming and _REQUEST_ID_RE.match(incoming):
        return incoming
    h = "%032x" % random.getrandbits(128)
    # Laid out as a version-4 UUID (version nibble 4, variant 10xx).
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    request_id = request_id_of(request.headers.get(REQUEST_ID, ""))
    request[REQUEST_ID_KEY] = request_id
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # Routing errors and redirects arrive as exceptions when no error middleware sits inside.
            exc.headers[REQUEST_ID] = request_id
            raise
        if not response.prepared:
            response.headers[REQUEST_ID] = request_id
        return response
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


async def read_body(request: web.Request, *, max_size: int) -> bytes:
    """The whole request body, or RequestTooLarge as soon as it passes ``max_size`` bytes."""
    too_large = RequestTooLarge(f"the request body is larger than the limit of {max_size} bytes")
    if request.content_length is not None and request.content_length > max_size:
        raise too_large
    chunks = []
    total = 0
    while True:
        chunk = await request.content.read(_READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_size:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, *, max_size: int) -> Any:
    """The request body parsed as JSON; an empty body is ``{}``."""
    body = await read_body(request, max_size=max_size)
    return parse_json(body)


def feed_query(request: web.Request, max_wait: float) -> tuple[int, float]:
    """``after`` and ``wait`` of a long poll on a numbered feed (easyfaas.feed), ``wait`` clamped."""
    try:
        after = int(request.query.get("after", "-1"))
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        raise InvalidParameterValue("after must be an integer and wait a number of seconds") from None
    if wait != wait:  # NaN
        raise InvalidParameterValue("wait must be a number of seconds")
    return after, min(max(wait, 0.0), max_wait)


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, or InvalidRequestContent: malformed, nested too deeply, or not valid Unicode."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestContent(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequestContent("invalid JSON: nested too deeply") from None
    # An escaped lone surrogate ("\ud800") parses, but is no Unicode text: every later encode() of
    # it would fail. Only bodies that contain such an escape at all are walked.
    if _SURROGATE_ESCAPE_RE.search(body) and not _valid_unicode(value):
        raise InvalidRequestContent("invalid JSON: a string contains a lone UTF-16 surrogate escape")
    return value


_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _valid_unicode(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


# ---- errors the HTTP parser raises before any handler runs --------------------------------------

class _JsonErrorRequestHandler(web_protocol.RequestHandler):
    """aiohttp answers unparsable requests (huge headers, bad framing, TLS on a plain port) itself,
    in plain text; this gives them the platform's JSON error shape like every other answer."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and refuses if data went out
        if status >= 500:
            err: FaasError = ServiceError("internal error while reading the request")
        else:
            detail = (getattr(exc, "message", None) or message or "").strip().splitlines()
            err = InvalidRequest(f"the request is not valid HTTP: {detail[0] if detail else 'unparsable'}",
                                 status=status)
        resp = web.json_response(err.to_dict(), status=status, headers={"Connection": "close"})
        resp.force_close()
        del plain
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """AppRunner whose connections answer even unparsable requests with FaasError JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the protocol class; the subclass adds only __call__.
        server.__class__ = _JsonErrorServer
        return server
