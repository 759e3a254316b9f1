"""TLS for the TCP daemons: ``--tls-cert`` and ``--tls-key`` (PEM), reloaded on SIGHUP.

:class:`ServerTLS` owns the one ``ssl.SSLContext`` a listening socket is made with. That context
only picks, at each handshake, the context currently loaded from the files (its SNI callback swaps
it in), so a reload — a new context built from the files, then swapped in — serves new
connections with the new certificate while established ones keep theirs, and a reload that fails
(a missing file, a key that does not match) keeps the old certificate and is logged.

``--tls-ca`` is the bundle a daemon trusts when it calls the pod's other daemons over TLS
(:func:`client_context`).
"""

from __future__ import annotations

import ssl
from typing import Any

import structlog

from easyfaas.config import Option, Settings

log = structlog.get_logger(__name__)

__all__ = ["TLS_OPTIONS", "ServerTLS", "client_context", "server_tls"]

TLS_OPTIONS = [
    Option("tls-cert", str, "", "PEM certificate (chain) to serve TLS with; empty: plain HTTP"),
    Option("tls-key", str, "", "PEM private key of --tls-cert"),
    Option("tls-ca", str, "", "PEM bundle this daemon trusts when it calls the pod's other daemons over TLS"),
]


def _load(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ServerTLS:
    """A server's TLS context that can be reloaded from its files (see the module docstring)."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._current = _load(cert, key)  # at start a bad file is fatal: raises
        self.context = _load(cert, key)
        self.context.sni_callback = self._pick
        self.reloads = 0

    def _pick(self, sslobj: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self._current
        return None

    def reload(self) -> bool:
        """Load the files again for new connections; False (and the old context kept) on failure."""
        try:
            fresh = _load(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls_reload_failed", cert=self.cert, error=str(exc))
            return False
        self._current = fresh
        self.reloads += 1
        log.info("tls_reloaded", cert=self.cert)
        return True

    def describe(self) -> dict[str, Any]:
        return {"tls": True}


def server_tls(opts: Settings) -> ServerTLS | None:
    """The daemon's TLS from its options; None for plain HTTP."""
    cert, key = getattr(opts, "tls_cert", ""), getattr(opts, "tls_key", "")
    if not cert and not key:
        return None
    if not cert or not key:
        raise SystemExit("--tls-cert and --tls-key go together")
    try:
        return ServerTLS(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"--tls-cert/--tls-key: cannot load {cert}: {exc}") from None


def client_context(opts: Settings) -> ssl.SSLContext | None:
    """The context for calls to the pod's other daemons: ``--tls-ca`` trusted, else the system's."""
    ca = getattr(opts, "tls_ca", "")
    return ssl.create_default_context(cafile=ca) if ca else None
