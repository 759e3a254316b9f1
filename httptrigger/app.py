"""The HTTP trigger as a process of its own (``python -m httptrigger``): the gateway
(httptrigger/gateway.py) in front of a controller it reaches over HTTP.

The controller can serve the same gateway itself (``--gateway-port``, httptrigger/embedded.py),
which saves the second HTTP hop; this process is for deployments that want the gateway apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp
import structlog

from easyfaas.config import Option, Settings, parse_options, parse_size
from easyfaas.http import ACCOUNT_ID, REQUEST_ID, wait_for_stop_signal
from easyfaas.logging import setup_logging
from httptrigger.follower import TriggerFollower
from httptrigger.gateway import Gateway, InvokeCall
from httptrigger.server import HttpServer

log = structlog.get_logger(__name__)

OPTIONS = [
    Option("port", int, 8080, "TCP port"),
    Option("host", str, "127.0.0.1", "address to listen on"),
    Option("controller-host", str, "http://127.0.0.1:8001", "controller base URL (host:port is accepted too)"),
    Option("repository-endpoint", str, "http://127.0.0.1:8002", "stubs base URL, whose trigger feed gives the routes"),
    Option("max-body-size", parse_size, "6M", "largest request body"),
    Option("shutdown-timeout", float, 30.0, "seconds requests under way may take on SIGTERM/SIGINT"),
]


def _base_url(url: str) -> str:
    return (url if url.startswith(("http://", "https://")) else f"http://{url}").rstrip("/")


def controller_call(controller: str, session: aiohttp.ClientSession) -> InvokeCall:
    """Invocations as ``POST <controller>/v1/functions/<brn>/invocations``."""
    base = _base_url(controller)

    async def call(brn: str, account_id: str, event: bytes, request_id: str) -> tuple[int, Mapping[str, str], bytes]:
        url = f"{base}/v1/functions/{quote(brn, safe=':$')}/invocations"
        headers = {ACCOUNT_ID: account_id, REQUEST_ID: request_id, "Content-Type": "application/json"}
        try:
            async with session.post(url, data=event, headers=headers) as resp:
                body = await resp.read()
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body
        except aiohttp.ClientError as exc:
            return 503, {}, f"controller unreachable: {exc}".encode()

    return call


async def serve(opts: Settings) -> None:
    timeout = aiohttp.ClientTimeout(total=960)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        gateway = Gateway(controller_call(opts.controller_host, session), max_body_size=opts.max_body_size)
        follower = TriggerFollower(_base_url(opts.repository_endpoint), gateway, session)
        server = HttpServer(gateway.handle, max_body_size=opts.max_body_size)
        await follower.start()
        await server.start(opts.host, opts.port)
        log.info("httptrigger_listening", host=opts.host, port=server.port, controller=opts.controller_host)
        try:
            await wait_for_stop_signal()
        finally:
            await server.close(opts.shutdown_timeout)
            await follower.close()


def main(argv: list[str] | None = None) -> None:
    opts = parse_options("httptrigger", OPTIONS, argv)
    setup_logging(opts, daemon="httptrigger")
    asyncio.run(serve(opts))
