"""The HTTP trigger as a service of its own (``python -m httptrigger``, or the all-in-one's
``httptrigger``): the gateway (httptrigger/gateway.py) in front of a controller it reaches over HTTP.

The controller can serve the same gateway itself (``--gateway-port``, httptrigger/embedded.py),
which saves the second HTTP hop; this service is for deployments that want the gateway apart.

Its metrics (firings and errors by function, process metrics) are served with ``--metrics-port``
on a listener of their own (``/metrics``, ``/healthz``, ``/readyz``): the gateway's port answers
routes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from aiohttp import web

from easyfaas.auth import SECURITY_OPTIONS, auth_middleware, authenticator_of
from easyfaas.config import Option, Settings, parse_options, parse_size
from easyfaas.brn import function_of
from easyfaas.daemon import Service, TCPEndpoint, run_daemon
from easyfaas.http import ACCOUNT_ID, FUNCTION_ERROR, REQUEST_ID
from easyfaas.keys import PodCredentials
from easyfaas.logging import setup_logging
from easyfaas.metrics import TRIGGER_HEADER, TriggerMetrics, add_observability_routes, new_registry
from easyfaas.tls import server_tls
from easyfaas.trace import TRACEPARENT
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
    Option("metrics-port", int, 0, "serve /metrics, /healthz and /readyz on this port of --host (0: not served)"),
    *SECURITY_OPTIONS,
]


def _base_url(url: str) -> str:
    return (url if url.startswith(("http://", "https://")) else f"http://{url}").rstrip("/")


def controller_call(controller: str, session: aiohttp.ClientSession,
                    metrics: TriggerMetrics | None = None, credentials: PodCredentials | None = None) -> InvokeCall:
    """Invocations as ``POST <controller>/v1/functions/<brn>/invocations`` (as the ``http`` trigger),
    counted in ``metrics``: a firing each, an error when it was not delivered or the function failed.
    They carry the pod's key (``credentials``; the caller's, when its route needs one, was checked
    here); ``session`` trusts ``--tls-ca``."""
    base = _base_url(controller)
    function_error = FUNCTION_ERROR.lower()

    async def call(brn: str, account_id: str, event: bytes, request_id: str,
                   traceparent: str) -> tuple[int, Mapping[str, str], bytes]:
        url = f"{base}/v1/functions/{quote(brn, safe=':$')}/invocations"
        headers = {ACCOUNT_ID: account_id, REQUEST_ID: request_id, "Content-Type": "application/json",
                   TRIGGER_HEADER: "http", **(credentials.headers() if credentials is not None else {})}
        if traceparent:
            headers[TRACEPARENT] = traceparent
        name = function_of(brn)[1]
        if metrics is not None:
            metrics.fired("http", name)
        try:
            async with session.post(url, data=event, headers=headers) as resp:
                body = await resp.read()
                answer = {k.lower(): v for k, v in resp.headers.items()}
        except aiohttp.ClientError as exc:
            if metrics is not None:
                metrics.failed("http", name)
            return 503, {}, f"controller unreachable: {exc}".encode()
        if metrics is not None and (resp.status >= 500 or function_error in answer):
            metrics.failed("http", name)
        return resp.status, answer, body

    return call


def httptrigger_service(opts: Settings) -> Service:
    """The HTTP trigger as a service of a daemon process (its own server answers every request)."""
    registry = new_registry()
    metrics = TriggerMetrics(registry)
    authn = authenticator_of(opts, [opts.host], daemon="httptrigger", admin_only=lambda method, path: True)
    credentials = PodCredentials(opts.auth_dir)
    tls = server_tls(opts)
    endpoint = GatewayEndpoint(opts.host, opts.port, _base_url(opts.repository_endpoint),
                               lambda session: controller_call(opts.controller_host, session, metrics, credentials),
                               max_body_size=opts.max_body_size, drain_timeout=opts.shutdown_timeout,
                               **gateway_security(opts, opts.host, authn, tls))
    # /metrics with an admin key (it names every account's functions); the health checks without.
    app = web.Application(middlewares=[auth_middleware(authn)] if authn is not None else [])
    add_observability_routes(app, registry, healthz_route=True)
    endpoints: list[Any] = [endpoint]
    if getattr(opts, "metrics_port", 0):
        endpoints.append(TCPEndpoint(opts.host, opts.metrics_port, tls))
    return Service("httptrigger", app, endpoints, shutdown_timeout=opts.shutdown_timeout,
                   listening={"controller": opts.controller_host}, freeze_heap=False)


def main(argv: list[str] | None = None) -> None:
    opts = parse_options("httptrigger", OPTIONS, argv)
    setup_logging(opts, daemon="httptrigger")
    run_daemon([httptrigger_service(opts)])
