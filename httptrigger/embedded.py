"""The gateway inside the controller process (``--gateway-port``): invocations go straight into the
controller's invoke pipeline, with no second HTTP hop and no second parse of the event.

:func:`gateway_endpoint` is the controller's gateway endpoint (httptrigger/endpoint.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from easyfaas.http import ACCOUNT_ID
from easyfaas.metrics import TRIGGER_HEADER
from easyfaas.trace import TRACEPARENT
from httptrigger.endpoint import GatewayEndpoint
from httptrigger.gateway import InvokeCall

_NO_QUERY: dict[str, str] = {}


class _Reply(Protocol):
    status: int
    headers: dict[str, str]
    body: bytes


class _Invoker(Protocol):
    async def invoke(self, ref: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes,
                     request_id: str, *, body_is_json: bool = False) -> Any: ...


def invoker_call(invoker: _Invoker) -> InvokeCall:
    """The controller's ``Invoker.invoke`` as the gateway's invoke callable."""

    async def call(brn: str, account_id: str, event: bytes, request_id: str,
                   traceparent: str) -> tuple[int, Mapping[str, str], bytes]:
        headers = {ACCOUNT_ID: account_id, TRIGGER_HEADER: "http"}
        if traceparent:
            headers[TRACEPARENT] = traceparent
        reply: _Reply = await invoker.invoke(brn, _NO_QUERY, headers, event, request_id, body_is_json=True)
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.body

    return call


def gateway_endpoint(invoker: _Invoker, *, host: str, port: int, stubs_url: str, max_body_size: int,
                     drain_timeout: float, **security: Any) -> GatewayEndpoint:
    """The gateway served by the controller, invoking through ``invoker``; ``security``: the keys
    and TLS arguments of :class:`GatewayEndpoint` (httptrigger.endpoint.gateway_security)."""

    def invoke(_session: aiohttp.ClientSession) -> InvokeCall:
        return invoker_call(invoker)

    return GatewayEndpoint(host, port, stubs_url, invoke, max_body_size=max_body_size, drain_timeout=drain_timeout,
                           **security)
