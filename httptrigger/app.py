"""The HTTP trigger as a service of its own (``python -m httptrigger``, or the all-in-one's
``httptrigger``): the gateway (httptrigger/gateway.py) in front of a controller it reaches over HTTP.

The controller can serve the same gateway itself (``--gateway-port``, httptrigger/embedded.py),
which saves the second HTTP hop; this service is for deployments that want the gateway apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import aiohttp
import structlog
from aiohttp import web

from easyfaas.auth import SECURITY_OPTIONS, authenticator_of
from easyfaas.config import Option, Settings, parse_options, parse_size
from easyfaas.daemon import Service, run_daemon
from easyfaas.http import ACCOUNT_ID, REQUEST_ID
from easyfaas.keys import PodCredentials
from easyfaas.logging import setup_logging
from easyfaas.tls import server_tls
from httptrigger.endpoint import GatewayEndpoint, gateway_security
from httptrigger.gateway import InvokeCall

log = structlog.get_logger(__name__)

OPTIONS = [
    Option("port", int, 8080, "TCP port"),
    Option("host", str, "127.0.0.1", "address to listen on"),
    Option("controller-host", str, "http://127.0.0.1:8001", "controller base URL (host:port is accepted too)"),
    Option("repository-endpoint", str, "http://127.0.0.1:8002", "stubs base URL, whose trigger feed gives the routes"),
    Option("max-body-size", parse_size, "6M", "largest request body"),
    Option("shutdown-timeout", float, 60.0, "seconds to let requests finish on SIGTERM/SIGINT"),
    *SECURITY_OPTIONS,
]


def _base_url(url: str) -> str:
    return (url if url.startswith(("http://", "https://")) else f"http://{url}").rstrip("/")


def controller_call(controller: str, session: aiohttp.ClientSession, *,
                    credentials: PodCredentials | None = None) -> InvokeCall:
    """Invocations as ``POST <controller>/v1/functions/<brn>/invocations``, with the pod's key (the
    caller's, when its route needs one, was checked here); ``session`` trusts ``--tls-ca``."""
    base = _base_url(controller)

    async def call(brn: str, account_id: str, event: bytes, request_id: str) -> tuple[int, Mapping[str, str], bytes]:
        url = f"{base}/v1/functions/{quote(brn, safe=':$')}/invocations"
        headers = {ACCOUNT_ID: account_id, REQUEST_ID: request_id, "Content-Type": "application/json",
                   **(credentials.headers() if credentials is not None else {})}
        try:
            async with session.post(url, data=event, headers=headers) as resp:
                body = await resp.read()
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body
        except aiohttp.ClientError as exc:
            return 503, {}, f"controller unreachable: {exc}".encode()

    return call


def httptrigger_service(opts: Settings) -> Service:
    """The HTTP trigger as a service of a daemon process (its own server answers every request)."""
    authn = authenticator_of(opts, [opts.host], daemon="httptrigger")
    credentials = PodCredentials(opts.auth_dir)
    endpoint = GatewayEndpoint(opts.host, opts.port, _base_url(opts.repository_endpoint),
                               lambda session: controller_call(opts.controller_host, session, credentials=credentials),
                               max_body_size=opts.max_body_size, drain_timeout=opts.shutdown_timeout,
                               **gateway_security(opts, opts.host, authn, server_tls(opts)))
    return Service("httptrigger", web.Application(), [endpoint], shutdown_timeout=opts.shutdown_timeout,
                   listening={"controller": opts.controller_host}, freeze_heap=False)


def main(argv: list[str] | None = None) -> None:
    opts = parse_options("httptrigger", OPTIONS, argv)
    setup_logging(opts, daemon="httptrigger")
    run_daemon([httptrigger_service(opts)])
