"""From the function's result (or the platform's error) to the HTTP answer, as AWS maps them.

Payload 2.0: a result that is not an object with ``statusCode`` is a 200 whose body is the result's
JSON text; an object with ``statusCode`` gives its status, ``headers``, ``multiValueHeaders``,
``cookies`` (one ``Set-Cookie`` each) and ``body`` (base64-decoded when ``isBase64Encoded``).
Payload 1.0: the object with ``statusCode`` is required; ``multiValueHeaders`` wins over
``headers`` for a name in both; there are no ``cookies``.

A result that breaks these rules (bad base64, a status outside 100–599, a header name that is not a
token, CR, LF or NUL in a header, a body that is not a string) is a 502, and nothing of it is sent.
Errors are answered as the product each entry emulates answers them (``ROUTE``: an HTTP API;
``URL``: a Lambda function URL); the details go to ``HttpAnswer.detail``, for the logs only.

Needs orjson (the result is parsed on every request).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

FUNCTION_ERROR_HEADER = "x-easyfaas-function-error"
TIMEOUT_ERROR_TYPE = "Sandbox.Timedout"
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
# The server frames the answer itself; a function's own framing headers would contradict it.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})
JSON_TYPE = "application/json"


class Product(str, enum.Enum):
    ROUTE = "route"  # an API Gateway HTTP API route
    URL = "url"      # a Lambda function URL


class Failure(str, enum.Enum):
    FUNCTION_ERROR = "function_error"
    MALFORMED = "malformed"
    TIMEOUT = "timeout"
    THROTTLED = "throttled"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    FORBIDDEN = "forbidden"
    UNAUTHORIZED = "unauthorized"  # an AuthType KEY route or function URL without a valid key
    INTERNAL = "internal"


_ERRORS: dict[tuple[Product, Failure], tuple[int, str]] = {
    (Product.ROUTE, Failure.FUNCTION_ERROR): (500, "Internal Server Error"),
    (Product.ROUTE, Failure.MALFORMED): (502, "Internal Server Error"),
    (Product.ROUTE, Failure.TIMEOUT): (503, "Service Unavailable"),
    (Product.ROUTE, Failure.THROTTLED): (429, "Too Many Requests"),
    (Product.ROUTE, Failure.NOT_FOUND): (404, "Not Found"),
    (Product.ROUTE, Failure.TOO_LARGE): (413, "Request Entity Too Large"),
    (Product.ROUTE, Failure.FORBIDDEN): (403, "Forbidden"),
    (Product.ROUTE, Failure.UNAUTHORIZED): (401, "Unauthorized"),
    (Product.ROUTE, Failure.INTERNAL): (500, "Internal Server Error"),
    (Product.URL, Failure.FUNCTION_ERROR): (502, "Internal Server Error"),
    (Product.URL, Failure.MALFORMED): (502, "Internal Server Error"),
    (Product.URL, Failure.TIMEOUT): (502, "Internal Server Error"),
    (Product.URL, Failure.THROTTLED): (429, "Too Many Requests"),
    (Product.URL, Failure.NOT_FOUND): (404, "Not Found"),
    (Product.URL, Failure.TOO_LARGE): (413, "Request Entity Too Large"),
    (Product.URL, Failure.FORBIDDEN): (403, "Forbidden"),
    (Product.URL, Failure.UNAUTHORIZED): (401, "Unauthorized"),
    (Product.URL, Failure.INTERNAL): (502, "Internal Server Error"),
}


class MalformedResponse(ValueError):
    """The function's result is not a valid response for its payload format."""


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    failure: Failure | None = None
    detail: str = ""  # why it failed, for the logs; never sent


def error_answer(failure: Failure, product: Product, detail: str = "") -> HttpAnswer:
    status, message = _ERRORS[(product, failure)]
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return HttpAnswer(status, [("Content-Type", JSON_TYPE)], body, failure, detail)


def answer_of_reply(status: int, headers: Mapping[str, str], body: bytes, *, version: str,
                    product: Product) -> HttpAnswer:
    """The answer for the controller's reply to an invocation (``headers`` looked up in lower case)."""
    if status == 200 and not headers.get(FUNCTION_ERROR_HEADER):
        try:
            return map_result(body, headers.get("content-type") or JSON_TYPE, version)
        except MalformedResponse as exc:
            return error_answer(Failure.MALFORMED, product, f"malformed response: {exc}")
    detail = body[:1000].decode("utf-8", "replace")
    if status == 429:
        return error_answer(Failure.THROTTLED, product, detail)
    if status == 404:
        return error_answer(Failure.NOT_FOUND, product, detail)
    if status == 413:
        return error_answer(Failure.TOO_LARGE, product, detail)
    if status in (408, 504):
        return error_answer(Failure.TIMEOUT, product, detail)
    if status in (401, 403):
        return error_answer(Failure.FORBIDDEN, product, detail)
    error = _json_object(body)
    if error is not None and ("errorType" in error or "errorMessage" in error):
        if error.get("errorType") == TIMEOUT_ERROR_TYPE:
            return error_answer(Failure.TIMEOUT, product, detail)
        return error_answer(Failure.FUNCTION_ERROR, product, detail)
    return error_answer(Failure.INTERNAL, product, f"HTTP {status}: {detail}")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def map_result(payload: bytes, content_type: str, version: str) -> HttpAnswer:
    """The answer for a successful invocation's result; MalformedResponse when it is not valid."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        try:
            result = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise MalformedResponse("the result is not JSON (or not UTF-8)") from None
        text = payload
    else:
        # A handler that returned a string: Lambda would have sent it as a JSON string.
        try:
            result = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedResponse("the result is not UTF-8") from None
        text = json.dumps(result, ensure_ascii=False).encode()
    structured = isinstance(result, dict) and "statusCode" in result
    if version == "1.0":
        if not structured:
            raise MalformedResponse("payload format 1.0 needs an object with statusCode")
        return _structured(result, cookies=False)
    if not structured:
        return HttpAnswer(200, [("Content-Type", JSON_TYPE)], text)
    return _structured(result, cookies=True)


def _structured(result: dict[str, Any], *, cookies: bool) -> HttpAnswer:
    status = result.get("statusCode")
    if isinstance(status, str) and status.isascii() and status.isdigit():  # "²".isdigit() too
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode {status!r} is not an integer in 100-599")
    headers: list[tuple[str, str]] = []
    multi = result.get("multiValueHeaders")
    multi_names: set[str] = set()
    if multi is not None:
        if not isinstance(multi, dict):
            raise MalformedResponse("multiValueHeaders is not an object")
        for name, values in multi.items():
            if not isinstance(values, list):
                raise MalformedResponse(f"multiValueHeaders.{name} is not a list")
            multi_names.add(_check_name(name))
            for value in values:
                _add(headers, name, value)
    single = result.get("headers")
    if single is not None:
        if not isinstance(single, dict):
            raise MalformedResponse("headers is not an object")
        for name, value in single.items():
            if _check_name(name) not in multi_names:
                _add(headers, name, value)
    if cookies:
        jar = result.get("cookies")
        if jar is not None:
            if not isinstance(jar, list):
                raise MalformedResponse("cookies is not a list")
            for cookie in jar:
                if not isinstance(cookie, str):
                    raise MalformedResponse("cookies holds a value that is not a string")
                _add(headers, "Set-Cookie", cookie)
    body = result.get("body")
    if body is None:
        raw = b""
    elif not isinstance(body, str):
        raise MalformedResponse(f"body is a {type(body).__name__}, not a string")
    elif result.get("isBase64Encoded") is True:
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedResponse("body is not valid base64 although isBase64Encoded is true") from None
    else:
        raw = body.encode("utf-8", "replace")
    return HttpAnswer(status, headers, raw)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _TOKEN_RE.match(name):
        raise MalformedResponse(f"header name {name!r} is not a valid token")
    return name.lower()


def _add(headers: list[tuple[str, str]], name: str, value: Any) -> None:
    lower = _check_name(name)
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    elif not isinstance(value, str):
        raise MalformedResponse(f"header {name}: value is not a string")
    if _BAD_VALUE_RE.search(value):
        raise MalformedResponse(f"header {name}: value holds CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise MalformedResponse(f"header {name}: value is not latin-1") from None
    if lower not in _FRAMING:
        headers.append((name, value))
