"""The HTTP trigger: `ANY /<uid>/<function>[/<version>]` → an invocation → an HTTP response.

A thin daemon in front of the controller (the full mapping — routes per function, auth — is a later
issue). It fixes the original's flaws: the event carries the path and an ``isBase64Encoded`` flag,
function errors come back as 500 with the function's error (not 502 with the controller's body),
and a function's ``{"statusCode","headers","body","isBase64Encoded"}`` result is honoured,
including base64 bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from easyfaas.auth import PRINCIPAL, SECURITY_OPTIONS, Authenticator, auth_middleware, authenticator_of
from easyfaas.brn import LATEST, Brn, account_hash, is_version, valid_function_name
from easyfaas.config import Option, Settings, parse_options, parse_size
from easyfaas.daemon import Service, TCPEndpoint, run_daemon
from easyfaas.keys import PodCredentials
from easyfaas.tls import client_context, server_tls
from easyfaas.errors import BadGateway, Forbidden, InvalidParameterValue
from easyfaas.http import (ACCOUNT_ID, FUNCTION_ERROR, REQUEST_ID, REQUEST_ID_KEY, error_middleware, read_body,
                           request_id_middleware)
from easyfaas.logging import setup_logging

log = structlog.get_logger(__name__)

SESSION = web.AppKey("session", aiohttp.ClientSession)
CONTROLLER = web.AppKey("controller", str)
MAX_BODY = web.AppKey("max_body", int)
CREDENTIALS = web.AppKey("credentials", PodCredentials)

OPTIONS = [
    Option("port", int, 8080, "TCP port"),
    Option("host", str, "127.0.0.1", "address to listen on"),
    Option("controller-host", str, "http://127.0.0.1:8001", "controller base URL (host:port is accepted too)"),
    Option("max-body-size", parse_size, "6M", "largest request body"),
    Option("shutdown-timeout", float, 60.0, "seconds to let requests finish on SIGTERM/SIGINT"),
    *SECURITY_OPTIONS,
]

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded")


def build_event(request: web.Request, body: bytes) -> dict[str, Any]:
    content_type = request.headers.get("Content-Type", "")
    is_text = not body or content_type.startswith(_TEXT_TYPES) or not content_type
    text: str | None = None
    if is_text:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = None
    return {
        "httpMethod": request.method,
        "path": request.path,
        "headers": {k: v for k, v in request.headers.items()},
        "queryStringParameters": {k: v for k, v in request.query.items()},
        "body": text if text is not None else base64.b64encode(body).decode(),
        "isBase64Encoded": text is None,
    }


def build_response(status: int, headers: dict[str, str], body: bytes) -> web.Response:
    if status != 200 or headers.get(FUNCTION_ERROR):
        # Platform errors keep their status (404, 429, ...); a function error is a 500 whose body
        # is the function's error object.
        return web.Response(status=status if status != 200 else 500, body=body,
                            content_type=headers.get("Content-Type", "application/json").split(";")[0])
    try:
        result = json.loads(body)
    except ValueError:
        result = None
    if isinstance(result, dict) and isinstance(result.get("statusCode"), int) and 100 <= result["statusCode"] <= 599:
        out_headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        payload = result.get("body", "")
        if not isinstance(payload, str):
            payload = json.dumps(payload)
        raw = payload.encode()
        if result.get("isBase64Encoded"):
            try:
                raw = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                return web.json_response({"errorMessage": "the function returned an invalid base64 body"}, status=502)
        return web.Response(status=result["statusCode"], body=raw, headers=out_headers)
    return web.Response(status=200, body=body, content_type=headers.get("Content-Type", "text/plain").split(";")[0])


async def trigger(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    principal = request.get(PRINCIPAL)
    if principal is not None and not principal.admin and principal.account != uid:
        raise Forbidden(f"the API key belongs to account {principal.account}, not {uid}")
    name = request.match_info["function"]
    version = request.match_info.get("version", LATEST)
    if not valid_function_name(name):
        raise InvalidParameterValue(f"invalid function name {name!r}")
    if not is_version(version):
        raise InvalidParameterValue(f"invalid function version {version!r}")
    body = await read_body(request, max_size=request.app[MAX_BODY])
    brn = Brn(account=account_hash(uid), name=name, qualifier=version)
    event = json.dumps(build_event(request, body))
    url = f"{request.app[CONTROLLER]}/v1/functions/{brn}/invocations"
    headers = {ACCOUNT_ID: uid, REQUEST_ID: request[REQUEST_ID_KEY], "Content-Type": "application/json"}
    if CREDENTIALS in request.app:
        headers.update(request.app[CREDENTIALS].headers())  # the pod's key: the caller's was checked here
    try:
        async with request.app[SESSION].post(url, data=event, headers=headers) as resp:
            out = await resp.read()
            return build_response(resp.status, dict(resp.headers), out)
    except aiohttp.ClientError as exc:
        raise BadGateway(f"controller unreachable: {exc}") from None


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello httptrigger")


def route_auth_type(request: web.Request) -> str:
    """``AuthType`` of the route a request came in on: ``KEY`` (the caller's key, of the function's
    account, is required) or ``NONE`` (anyone may call it). The ``/<uid>/<function>`` routes have no
    configuration of their own: they take ``KEY`` whenever the daemon requires keys."""
    return "KEY"


def make_app(controller: str, *, max_body: int = 6 << 20, authn: Authenticator | None = None,
             credentials: PodCredentials | None = None, client_ssl: Any = None) -> web.Application:
    """The HTTP trigger; with ``authn``, routes whose :func:`route_auth_type` is ``KEY`` need a key."""
    if not controller.startswith(("http://", "https://")):
        controller = f"http://{controller}"
    middlewares = [request_id_middleware, error_middleware]
    if authn is not None:
        middlewares.append(auth_middleware(authn, applies=lambda request: route_auth_type(request) == "KEY"))
    app = web.Application(middlewares=middlewares, client_max_size=max_body + 1)
    if credentials is not None:
        app[CREDENTIALS] = credentials
    app[CONTROLLER] = controller.rstrip("/")
    app[MAX_BODY] = max_body

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=960),
                                             connector=aiohttp.TCPConnector(ssl=client_ssl) if client_ssl else None)
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/hello", hello)
    app.router.add_get("/healthz", hello)
    app.router.add_route("*", "/{uid:[A-Za-z0-9_-]+}/{function}", trigger)
    app.router.add_route("*", "/{uid:[A-Za-z0-9_-]+}/{function}/{version}", trigger)
    return app


def httptrigger_service(opts: Settings) -> Service:
    """The HTTP trigger as a service of a daemon process."""
    authn = authenticator_of(opts, [opts.host], daemon="httptrigger")
    app = make_app(opts.controller_host, max_body=opts.max_body_size, authn=authn,
                   credentials=PodCredentials(opts.auth_dir), client_ssl=client_context(opts))
    return Service("httptrigger", app, [TCPEndpoint(opts.host, opts.port, server_tls(opts))],
                   shutdown_timeout=opts.shutdown_timeout, freeze_heap=False)


def main(argv: list[str] | None = None) -> None:
    opts = parse_options("httptrigger", OPTIONS, argv)
    setup_logging(opts, daemon="httptrigger")
    run_daemon([httptrigger_service(opts)])
