"""The gateway: one HTTP request → the route (or function URL) it reaches → one invocation → the answer.

Configured routes come first (the most specific wins, httptrigger/routes.py) and are answered like an
API Gateway HTTP API; a path no route takes that names ``/<uid>/<function>[/<version>][/<rest>]``
is a function URL, answered like a Lambda function URL; anything else is 404 ``{"message":"Not
Found"}`` (but ``GET /healthz``, when no route takes it: the health check, and ``GET /openapi.json``:
the gateway's OpenAPI document, easyfaas/openapi/httptrigger.yaml). CORS preflights of
routes that configure ``Cors`` are answered here, without invoking.

A route whose ``AuthType`` is ``KEY`` (and every function URL when the gateway's keys are
required) answers only callers with an API key (``Authorization: Bearer <key>``, easyfaas/keys.py)
of the function's account, or an admin key: else 401 ``{"message":"Unauthorized"}`` or 403. The key
is checked before anything is invoked and is not passed on to the function.

The invocation itself is a callable given by whoever hosts the gateway: the controller's own
invoke pipeline when the gateway runs inside the controller, an HTTP call to the controller when it
runs as its own process (``python -m httptrigger``). A caller's W3C ``traceparent`` is passed on to
it, and the controller's ``traceparent`` (the invocation's span) comes back in the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping

import orjson
import structlog

from easyfaas.auth import Authenticator
from easyfaas.brn import Brn, account_hash
from easyfaas.errors import FaasError
from easyfaas.openapi import PATH, document_json
from easyfaas.trace import TRACEPARENT
from httptrigger import payload_v1, payload_v2
from httptrigger.config import Cors, RouteTarget
from httptrigger.cors import preflight_headers, response_headers
from httptrigger.request import HttpRequest
from httptrigger.response import Failure, HttpAnswer, Product, answer_of_reply, error_answer
from httptrigger.routes import METHODS, Route, RouteTable, parse_function_url, split_path

log = structlog.get_logger(__name__)

# The daemon's health check, answered when no route takes the path (a route of that path wins).
HEALTH_PATH = "healthz"
OPENAPI_PATH = PATH.lstrip("/")

# (versioned function BRN, caller account id, event JSON, request id, the caller's traceparent or
# "") → (status, headers with lower-case names, body): the controller's answer to
# ``POST /v1/functions/<brn>/invocations``.
InvokeCall = Callable[[str, str, bytes, str, str], Awaitable[tuple[int, Mapping[str, str], bytes]]]


class Gateway:
    def __init__(self, invoke: InvokeCall, *, max_body_size: int = 6 << 20, auth: Authenticator | None = None,
                 function_url_auth: str = "NONE") -> None:
        self.invoke = invoke
        self.max_body_size = max_body_size
        self.auth = auth  # checks the keys of KEY routes; None: no key is valid
        self.function_url_auth = function_url_auth  # "KEY" or "NONE", for every function URL
        self.routes: RouteTable[RouteTarget] = RouteTable()
        self.openapi = document_json("httptrigger")

    def set_routes(self, routes: RouteTable[RouteTarget]) -> None:
        """Serve ``routes`` from now on (requests under way keep the table they matched in)."""
        self.routes = routes

    async def handle(self, request: HttpRequest) -> HttpAnswer:
        answer = await self._dispatch(request)
        if answer.failure is not None:
            log.info("gateway_request_failed", request_id=request.request_id, method=request.method,
                     path=request.raw_path, status=answer.status, failure=answer.failure.value, detail=answer.detail)
        return answer

    async def _dispatch(self, request: HttpRequest) -> HttpAnswer:
        if len(request.body) > self.max_body_size:
            return error_answer(Failure.TOO_LARGE, Product.ROUTE, f"body of {len(request.body)} bytes")
        segments = split_path(request.raw_path)
        if segments is None:
            return error_answer(Failure.NOT_FOUND, Product.ROUTE, "a path no route may see")
        routes = self.routes
        origin = request.header("origin")
        if request.method == "OPTIONS":
            wanted = request.header("access-control-request-method")
            cors = self._cors_of(routes, wanted.upper(), segments) if wanted else None
            if wanted and cors is not None:
                headers = preflight_headers(cors, origin, wanted, request.header("access-control-request-headers"))
                return HttpAnswer(204, headers)
        match = routes.match_segments(request.method, segments)
        if match is not None:
            return await self._route(request, match.route, match.path_parameters, origin)
        url = parse_function_url(request.raw_path)
        if url is None:
            if segments == [HEALTH_PATH] and request.method in ("GET", "HEAD"):
                return HttpAnswer(200, [("Content-Type", "text/plain; charset=utf-8")], b"ok")
            if segments == [OPENAPI_PATH] and request.method in ("GET", "HEAD"):
                return HttpAnswer(200, [("Content-Type", "application/json")], self.openapi)
            return error_answer(Failure.NOT_FOUND, Product.ROUTE, "no route")
        brn = str(Brn(account_hash(url.account_id), url.function, url.qualifier))
        if self.function_url_auth == "KEY":
            refused = await self._check_key(request, url.account_id, Product.URL)
            if refused is not None:
                return refused
            request = _without_key(request)
        event = payload_v2.build_event(request, account_id=url.account_id, raw_path=url.raw_path)
        status, headers, body = await self.invoke(brn, url.account_id, _dump(event), request.request_id,
                                                  request.header(TRACEPARENT) or "")
        return _traced(answer_of_reply(status, headers, body, version=payload_v2.VERSION, product=Product.URL),
                       headers)

    @staticmethod
    def _cors_of(routes: RouteTable[RouteTarget], method: str, segments: list[str]) -> Cors | None:
        """The CORS config a preflight for ``method`` on this path follows: the route it would
        reach, else any route of the path that configures CORS (whose AllowMethods then decide)."""
        for m in (method, *sorted(METHODS)):
            found = routes.match_segments(m, segments)
            if found is not None and found.route.target.config.Cors is not None:
                return found.route.target.config.Cors
        return None

    async def _route(self, request: HttpRequest, route: Route[RouteTarget], params: dict[str, str],
                     origin: str | None) -> HttpAnswer:
        target = route.target
        config = target.config
        if config.AuthType == "KEY":
            refused = await self._check_key(request, target.account_id, Product.ROUTE)
            if refused is not None:
                return refused
            request = _without_key(request)
        if config.PayloadFormatVersion == payload_v1.VERSION:
            event = payload_v1.build_event(request, account_id=target.account_id, resource=config.Path,
                                           route_key=route.route_key, path_parameters=params)
        else:
            event = payload_v2.build_event(request, account_id=target.account_id, route_key=route.route_key,
                                           path_parameters=params)
        status, headers, body = await self.invoke(target.function_brn, target.account_id, _dump(event),
                                                  request.request_id, request.header(TRACEPARENT) or "")
        answer = _traced(answer_of_reply(status, headers, body, version=config.PayloadFormatVersion,
                                         product=Product.ROUTE), headers)
        if config.Cors is not None and origin:
            answer.headers.extend(response_headers(config.Cors, origin))
        return answer


    async def _check_key(self, request: HttpRequest, account_id: str, product: Product) -> HttpAnswer | None:
        """None when the request carries a key that may invoke ``account_id``'s function, else the refusal."""
        if self.auth is None:
            answer = error_answer(Failure.UNAUTHORIZED, product, "no key store: no key is valid")
        else:
            try:
                principal = await self.auth.principal(request.header("authorization") or "")
            except FaasError as err:
                answer = error_answer(Failure.UNAUTHORIZED, product, err.cause)
            else:
                if principal.admin or principal.key.Account == account_id:
                    return None
                return error_answer(Failure.FORBIDDEN, product,
                                    f"the key belongs to account {principal.key.Account}, not {account_id}")
        answer.headers.append(("WWW-Authenticate", 'Bearer realm="easyfaas"'))
        return answer


def _traced(answer: HttpAnswer, reply_headers: Mapping[str, str]) -> HttpAnswer:
    """The answer with the invocation's ``traceparent``, unless the function set its own."""
    traceparent = reply_headers.get(TRACEPARENT)
    if traceparent and not any(name.lower() == TRACEPARENT for name, _ in answer.headers):
        answer.headers.append((TRACEPARENT, traceparent))
    return answer


def _without_key(request: HttpRequest) -> HttpRequest:
    """The request as the function sees it: without the caller's API key."""
    return dataclasses.replace(request, headers=[h for h in request.headers if h[0].lower() != "authorization"])


def _dump(event: dict[str, object]) -> bytes:
    return orjson.dumps(event)
