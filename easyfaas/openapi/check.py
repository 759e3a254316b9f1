"""A response check for test runs: every answer an application gives is validated against its
OpenAPI document, and each one that does not conform is recorded.

Enabled only when ``EASYFAAS_OPENAPI_CHECK`` names a file (tests/fakes/openapi_check.py sets it for
the test session, so daemons started by the tests inherit it). Then :func:`add_openapi_route` puts
:func:`response_check_middleware` outermost on the application, and the controller's front door
(which answers invocations below aiohttp) invokes through :class:`CheckedInvoker`. A
non-conforming answer is appended to that file as one JSON line ``{"document", "method", "path",
"status", "errors"}``, and the test session fails at its end. openapi-core (the ``test`` extra) is
imported only then.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
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


@functools.cache
def _spec(document_text: str) -> Any:
    """The validated spec of a document, built once per process: validating the document takes about a
    second, and every application a test builds checks against the same few documents."""
    from openapi_core import OpenAPI

    return OpenAPI.from_dict(json.loads(document_text))


class ResponseCheck:
    """Validates answers against one document and records those that break it."""

    def __init__(self, document: dict[str, Any], name: str, out_path: str) -> None:
        self.spec = _spec(json.dumps(document, sort_keys=True))
        self.document = document
        self.name = name
        self.out_path = out_path

    def problems(self, method: str, path: str, pattern: str, path_params: Mapping[str, str],
                 query: Mapping[str, str], headers: Mapping[str, str], status: int,
                 response_headers: Mapping[str, str], body: bytes) -> list[str]:
        from openapi_core.testing import MockRequest, MockResponse

        request = MockRequest("http://localhost", method, path, path_pattern=pattern, view_args=dict(path_params),
                              args=dict(query), headers=dict(headers))
        content_type = next((v for k, v in response_headers.items() if k.lower() == "content-type"), "")
        response = MockResponse(body, status_code=status, headers=dict(response_headers),
                                content_type=content_type.split(";")[0].strip() if body else content_type)
        out = []
        for err in self.spec.unmarshal_response(request, response).errors:
            if not body and type(err).__name__ == "MissingData" and self._may_be_empty(pattern, method, status):
                continue  # openapi-core wants data for any content; an empty text is a valid string
            details = [str(e) for e in getattr(err, "schema_errors", ()) or ()]
            cause = err.__cause__
            if cause is not None:
                details += [str(e.message) for e in getattr(cause, "schema_errors", ()) or ()] or [str(cause)]
            detail = "; ".join(d.splitlines()[0][:300] for d in details)
            out.append(str(err)[:300] + (f": {detail}" if detail else ""))
        return out

    def _resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            section, name = node["$ref"].split("/")[-2:]
            node = self.document["components"][section][name]
        return node

    def _may_be_empty(self, pattern: str, method: str, status: int) -> bool:
        """Whether every documented body of this answer is a string that may be empty."""
        item = self._resolve(self.document["paths"].get(pattern, {}))
        answer = self._resolve(item.get(method.lower(), {}).get("responses", {}).get(str(status), {}))
        schemas = [self._resolve(media.get("schema", {})) for media in answer.get("content", {}).values()]
        return bool(schemas) and all(schema.get("type", "string") == "string" and not schema.get("minLength")
                                     for schema in schemas)

    def check(self, method: str, path: str, status: int, **answer: Any) -> None:
        try:
            found = self.problems(method, path, status=status, **answer)
        except Exception as exc:  # noqa: BLE001 - a check that breaks is itself a finding
            found = [f"the check failed: {exc!r}"]
        if found:
            record = {"document": self.name, "method": method, "path": path, "status": status, "errors": found}
            log.warning("openapi_nonconforming_response", **record)
            with open(self.out_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")


def response_check_middleware(document: dict[str, Any], name: str, out_path: str) -> Any:
    """Middleware validating each answer to a routed request against ``document``."""
    checker = ResponseCheck(document, name, out_path)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.match_info.http_exception is not None or not isinstance(response, web.Response):
            return response  # no route (the router's 404/405), or a streamed answer
        resource = request.match_info.route.resource
        body = response.body if isinstance(response.body, (bytes, bytearray)) else b""
        checker.check(request.method, request.path, response.status,
                      pattern=resource.canonical if resource is not None else request.path,
                      path_params=request.match_info, query=request.query, headers=request.headers,
                      response_headers=response.headers, body=bytes(body))
        return response

    return check


class CheckedInvoker:
    """An invoker whose replies are checked against the invoke operation (the front door's)."""

    PATTERN = "/v1/functions/{ref}/invocations"

    def __init__(self, invoker: Any, document: dict[str, Any], out_path: str) -> None:
        self._invoker = invoker
        self._check = ResponseCheck(document, "controller", out_path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._invoker, name)

    async def invoke(self, ref: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes,
                     request_id: str, **kwargs: Any) -> Any:
        reply = await self._invoker.invoke(ref, query, headers, body, request_id, **kwargs)
        self._check.check("POST", self.PATTERN.replace("{ref}", ref), reply.status, pattern=self.PATTERN,
                          path_params={"ref": ref}, query=query, headers=dict(headers.items()),
                          response_headers=reply.headers, body=reply.body)
        return reply
