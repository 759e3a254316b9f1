"""Who may call a daemon's TCP API: ``Authorization: Bearer <key>`` checked once per request.

Every TCP daemon (stubs, controller, the HTTP trigger's management side) takes the options of
:data:`AUTH_OPTIONS`. ``--auth auto`` (the default) requires keys unless every listen address is
loopback; ``required`` and ``off`` say so outright. A daemon asked to listen beyond loopback with
keys off refuses to start unless ``--allow-unauthenticated`` is given.

With keys required, :func:`auth_middleware` (one per application, so every route, present and
future, is covered) and :meth:`Authenticator.admit` (the controller's front door) make each
request carry a valid key (else 401 with ``WWW-Authenticate: Bearer``), and:

* an **account key** acts for its account only: the request's ``X-easyfaas-Account-Id`` is set to
  it (one that disagrees is refused with 403), and admin-only routes are refused with 403;
* an **admin key** acts for the account its request names (or the daemon's default one) and may
  use every route, the key admin API included.

Only :data:`OPEN_PATHS` (health checks, which say nothing) answer without a key.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, MutableMapping

import structlog
from aiohttp import web
from multidict import CIMultiDict

from easyfaas.config import Option, Settings, parse_bool
from easyfaas.errors import FaasError, Forbidden, Unauthenticated
from easyfaas.http import ACCOUNT_ID, error_response
from easyfaas.keys import ApiKey, KeyStore, bootstrap
from easyfaas.outbound import OUTBOUND_OPTIONS
from easyfaas.tls import TLS_OPTIONS

log = structlog.get_logger(__name__)

__all__ = ["AUTH_OPTIONS", "AUTHORIZATION", "OPEN_PATHS", "PRINCIPAL", "Authenticator", "Principal",
           "AUTHENTICATOR", "SECURITY_OPTIONS", "auth_middleware", "authenticator_of", "bearer", "is_loopback"]

AUTHORIZATION = "Authorization"
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="easyfaas"'}
#: paths answered without a key: health and readiness checks, which the supervisor and probes call
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/hello"})
AUTH_MODES = ("auto", "required", "off")

AUTH_OPTIONS: list[Option] = [
    Option("auth", str, "auto", "API keys: required, off, or auto (required unless listening on loopback only)"),
    Option("auth-dir", str, "/var/faas/auth", "where the pod's API keys (hashed) and key files live"),
    Option("allow-unauthenticated", parse_bool, False,
           "allow listening beyond loopback with --auth off (anyone who reaches the port may do anything)"),
]

#: every TCP daemon's control-plane options: keys, TLS, the outbound guard
SECURITY_OPTIONS = [*AUTH_OPTIONS, *TLS_OPTIONS, *OUTBOUND_OPTIONS]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the key, and the account it acts for (None: the daemon's default)."""

    key: ApiKey
    account: str | None

    @property
    def admin(self) -> bool:
        return self.key.Admin


PRINCIPAL = web.RequestKey("principal", Principal)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, "", 0.0.0.0 or :: : reachable from elsewhere


def auth_required(mode: str, hosts: Iterable[str]) -> bool:
    """Whether keys are required for ``--auth mode`` on these listen addresses."""
    mode = {"1": "required", "true": "required", "yes": "required", "on": "required", "0": "off", "false": "off",
            "no": "off", "": "auto"}.get(str(mode).strip().lower(), str(mode).strip().lower())
    if mode not in AUTH_MODES:
        raise SystemExit(f"--auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    if mode == "auto":
        return not all(is_loopback(h) for h in hosts)
    return mode == "required"


def bearer(token: str) -> dict[str, str]:
    """The request header that carries ``token``."""
    return {AUTHORIZATION: f"Bearer {token}"}


class Authenticator:
    """Checks the keys of one daemon's requests (see the module docstring)."""

    def __init__(self, store: KeyStore, *, admin_only: Callable[[str, str], bool] = lambda method, path: False,
                 ) -> None:
        self.store = store
        self.admin_only = admin_only

    async def principal(self, authorization: str) -> Principal:
        """The key of an ``Authorization`` header value; Unauthenticated when there is none that is valid."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing API key" if not authorization else "the Authorization header must be "
                                                                            "Bearer <key>")
        token = token.strip()
        key = self.store.check_cached(token)
        if key is None:
            key = await asyncio.to_thread(self.store.verify, token)  # argon2: milliseconds, once per key
        if not key:
            raise Unauthenticated("the API key is not valid (unknown, malformed or revoked)")
        return Principal(key, key.Account)

    async def admit(self, method: str, path: str, headers: MutableMapping[str, str]) -> Principal:
        """Check a request's key; sets ``headers``' account for an account key. Raises FaasError."""
        principal = await self.principal(headers.get(AUTHORIZATION, ""))
        key = principal.key
        if key.Account is not None:
            named = headers.get(ACCOUNT_ID)
            if named and named != key.Account:
                raise Forbidden(f"the API key belongs to account {key.Account}, not {named}")
            headers[ACCOUNT_ID] = key.Account
        elif not key.Admin:
            raise Forbidden("the API key has no account")
        else:
            principal = Principal(key, headers.get(ACCOUNT_ID) or None)
        if not key.Admin and self.admin_only(method, path):
            raise Forbidden(f"{method} {path} needs an admin key")
        return principal


#: where an application keeps its Authenticator (the controller's front door finds it there)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def auth_middleware(authn: Authenticator, *, applies: Callable[[web.Request], bool] | None = None) -> Any:
    """The aiohttp middleware enforcing ``authn`` on every route but :data:`OPEN_PATHS` (and those
    ``applies`` says no to: the HTTP trigger's routes of ``AuthType`` ``NONE``)."""

    @web.middleware
    async def check_key(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in OPEN_PATHS or (applies is not None and not applies(request)):
            return await handler(request)
        headers = CIMultiDict(request.headers)
        try:
            principal = await authn.admit(request.method, request.path, headers)
        except Unauthenticated as err:
            return error_response(err, headers=dict(WWW_AUTHENTICATE))
        except FaasError as err:
            return error_response(err)
        if headers.get(ACCOUNT_ID) != request.headers.get(ACCOUNT_ID):
            request = request.clone(headers=headers)
        request[PRINCIPAL] = principal
        return await handler(request)

    return check_key


def authenticator_of(opts: Settings, hosts: Iterable[str], *, daemon: str,
                     admin_only: Callable[[str, str], bool] = lambda method, path: False) -> Authenticator | None:
    """The daemon's authenticator from its options (None: keys are off); refuses an open non-loopback
    listener unless ``--allow-unauthenticated``. Writes the pod's key files on first start."""
    hosts = list(hosts)
    mode = getattr(opts, "auth", "auto")
    if not auth_required(mode, hosts):
        beyond = [h for h in hosts if not is_loopback(h)]
        if beyond and not getattr(opts, "allow_unauthenticated", False):
            raise SystemExit(f"{daemon}: refusing to listen on {', '.join(beyond)} without API keys; use --auth "
                             f"required (or --allow-unauthenticated to accept anyone who reaches the port)")
        if beyond:
            log.warning("auth_off", daemon=daemon, hosts=beyond, detail="anyone who reaches the port may do anything")
        return None
    store = KeyStore(Path(opts.auth_dir))
    bootstrap(store)
    log.info("auth_required", daemon=daemon, keys=str(store.path))
    return Authenticator(store, admin_only=admin_only)
