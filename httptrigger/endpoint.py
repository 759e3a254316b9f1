"""The gateway as an endpoint of a daemon's service (easyfaas/daemon.py): where it listens, and its
lifetime. Started with the service's sites: an HTTP session, the trigger follower (a moment is
given for the first route table; a stubs not up yet holds nothing back) and the server. Stopped
with them, before the service's ``on_shutdown`` and cleanup: it stops accepting, lets requests
under way finish (up to ``drain_timeout``), then closes its connections, follower and session.

Keys and TLS (docs/security.md): ``auth`` checks the keys of ``AuthType: KEY`` routes, and of
function URLs when ``function_url_auth`` is ``KEY`` (:func:`gateway_security` gives both, and
``credentials``, the pod's key the endpoint's session sends to stubs' trigger feed); with ``tls``
the gateway serves HTTPS, its certificate reloaded on SIGHUP like every endpoint's.

The controller serves it in-process (``--gateway-port``: invocations go straight into its invoke
pipeline); ``python -m httptrigger`` serves it on its own, invoking over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from easyfaas.auth import Authenticator, auth_required
from easyfaas.config import Settings
from easyfaas.keys import KeyStore, PodCredentials
from easyfaas.tls import ServerTLS, client_context
from httptrigger.follower import TriggerFollower
from httptrigger.gateway import Gateway, InvokeCall
from httptrigger.server import HttpServer

log = structlog.get_logger(__name__)

FIRST_SYNC_TIMEOUT = 1.0


@dataclass(frozen=True)
class GatewayEndpoint:
    host: str
    port: int
    stubs_url: str
    invoke: Callable[[aiohttp.ClientSession], InvokeCall]  # given the endpoint's own HTTP session
    max_body_size: int = 6 << 20
    drain_timeout: float = 30.0
    auth: Authenticator | None = None
    function_url_auth: str = "NONE"
    credentials: Callable[[], dict[str, str]] | None = None
    tls: ServerTLS | None = None
    client_ssl: Any = None  # the CA the session trusts for stubs and the controller on TLS (--tls-ca)

    def site(self, runner: web.AppRunner) -> web.BaseSite:
        return _GatewaySite(runner, self)

    def describe(self) -> dict[str, Any]:
        return {"gateway": f"{self.host}:{self.port}", **({"gateway_tls": True} if self.tls else {})}


class _GatewaySite(web.BaseSite):
    def __init__(self, runner: web.AppRunner, endpoint: GatewayEndpoint) -> None:
        super().__init__(runner)
        self._endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._follower: TriggerFollower | None = None
        self._server: HttpServer | None = None

    @property
    def name(self) -> str:
        return f"http://{self._endpoint.host}:{self._endpoint.port}"

    async def start(self) -> None:
        await super().start()
        e = self._endpoint
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=960), headers=e.credentials() if e.credentials is not None else None,
            connector=aiohttp.TCPConnector(ssl=e.client_ssl) if e.client_ssl is not None else None)
        gateway = Gateway(e.invoke(self._session), max_body_size=e.max_body_size, auth=e.auth,
                          function_url_auth=e.function_url_auth)
        self._follower = TriggerFollower(e.stubs_url, gateway, self._session)
        await self._follower.start(first_sync_timeout=FIRST_SYNC_TIMEOUT)
        self._server = HttpServer(gateway.handle, max_body_size=e.max_body_size)
        await self._server.start(e.host, e.port, ssl=e.tls.context if e.tls is not None else None)
        log.info("gateway_listening", host=e.host, port=self._server.port, routes=len(gateway.routes))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close(self._endpoint.drain_timeout)
        if self._follower is not None:
            await self._follower.close()
        if self._session is not None:
            await self._session.close()
        await super().stop()


def gateway_security(opts: Settings, host: str, authn: Authenticator | None, tls: ServerTLS | None) -> dict[str, Any]:
    """The security arguments of a gateway endpoint listening on ``host``, from the daemon's options.

    Keys of KEY routes are checked against the pod's key store whether or not the daemon's own API
    requires keys (``authn`` is its authenticator, None when it does not); function URLs require a
    key whenever keys are required on ``host``.
    """
    auth_dir = getattr(opts, "auth_dir", "")
    auth = authn if authn is not None else (Authenticator(KeyStore(auth_dir)) if auth_dir else None)
    url_auth = "KEY" if auth_required(getattr(opts, "auth", "auto"), [host]) else "NONE"
    return {"auth": auth, "function_url_auth": url_auth,
            "credentials": PodCredentials(auth_dir).headers if auth_dir else None, "tls": tls,
            "client_ssl": client_context(opts)}
