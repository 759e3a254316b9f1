"""A response check for test runs: every answer an application gives is validated against its
OpenAPI document, and each one that does not conform is recorded.

Enabled only when ``EASYFAAS_OPENAPI_CHECK`` names a file (tests/conftest.py sets it for the test
session, so daemons started by the tests inherit it); :func:`add_openapi_route` then puts
:func:`response_check_middleware` outermost on the application. A non-conforming answer is appended
to that file as one JSON line ``{"document", "method", "path", "status", "errors"}`` and the test
session fails at its end. openapi-core (the ``test`` extra) is imported only then.
"""

from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

ENV = "EASYFAAS_OPENAPI_CHECK"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_file() -> str:
    """The file non-conformances go to; empty when the check is off."""
    value = os.environ.get(ENV, "")
    return "" if value in ("", "0") else value


def response_check_middleware(document: dict[str, Any], name: str, out_path: str) -> Any:
    """Middleware validating each answer to a documented route against ``document``."""
    from openapi_core import OpenAPI
    from openapi_core.testing import MockRequest, MockResponse

    spec = OpenAPI.from_dict(document)

    def problems(request: web.Request, response: web.Response) -> list[str]:
        route = request.match_info.route.resource
        pattern = route.canonical if route is not None else request.path
        mock_request = MockRequest("http://localhost", request.method, request.path, path_pattern=pattern,
                                   view_args=dict(request.match_info), args=dict(request.query),
                                   headers=dict(request.headers))
        body = response.body if isinstance(response.body, (bytes, bytearray)) else b""
        content_type = response.headers.get("Content-Type", "")
        mock_response = MockResponse(bytes(body), status_code=response.status, headers=dict(response.headers),
                                     content_type=content_type.split(";")[0].strip() if body else content_type)
        result = spec.unmarshal_response(mock_request, mock_response)
        errors = list(result.errors)
        out = []
        for err in errors:
            text = str(err)
            details = [str(e) for e in getattr(err, "schema_errors", ()) or ()]
            cause = err.__cause__
            if cause is not None:
                details += [str(e.message) for e in getattr(cause, "schema_errors", ()) or ()] or [str(cause)]
            detail = "; ".join(d.splitlines()[0][:300] for d in details)
            out.append(text[:300] + (f": {detail}" if detail else ""))
        return out

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.match_info.http_exception is not None or not isinstance(response, web.Response):
            return response  # no route (the router's 404/405), or a streamed answer
        try:
            found = problems(request, response)
        except Exception as exc:  # noqa: BLE001 - a check that breaks is itself a finding
            found = [f"the check failed: {exc!r}"]
        if found:
            record = {"document": name, "method": request.method, "path": request.path,
                      "status": response.status, "errors": found}
            log.warning("openapi_nonconforming_response", **record)
            with open(out_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        return response

    return check
