"""The stubs daemon (function registry): its options, its service and ``main`` (``python -m stubs``)."""

from __future__ import annotations

from typing import Sequence

from pathlib import Path

from easyfaas.auth import SECURITY_OPTIONS, auth_middleware, authenticator_of
from easyfaas.config import Option, Settings, parse_options, parse_size
from easyfaas.daemon import Service, TCPEndpoint, run_daemon
from easyfaas.logging import setup_logging
from easyfaas.runtimes import RuntimeCatalog
from easyfaas.keys import PodCredentials
from easyfaas.secret_store import SecretStore
from easyfaas.tls import client_context, server_tls
from stubs.app import DEFAULT_ACCOUNT_ID, make_app
from stubs.keys import add_key_routes, admin_only, needs_key
from stubs.metrics import add_stubs_observability
from stubs.store import FunctionStore
from stubs.triggers import add_trigger_status

OPTIONS = [
    Option("host", str, "127.0.0.1", "listen address"),
    Option("port", int, 9009, "TCP port (deployments use 8002)"),
    Option("function-dir", str, "/var/faas/funcData", "where functions and their code are stored"),
    Option("runtime-dir", str, "/var/faas/runtime", "directory of <runtime>/runtime.yaml files"),
    Option("max-code-size", parse_size, "50M", "largest accepted code zip"),
    Option(
        "default-account-id",
        str,
        DEFAULT_ACCOUNT_ID,
        "account of requests without X-easyfaas-Account-Id",
    ),
    Option("public-url", str, "", "base URL for HTTP code locations; empty: filesystem locations"),
    Option("shutdown-timeout", float, 10.0, "seconds to let requests finish on SIGTERM/SIGINT"),
    *SECURITY_OPTIONS,
    Option("controller-url", str, "",
           "the controller running the event sources: GET of a cron or mqtt trigger adds its live status"),
]


def stubs_service(opts: Settings) -> Service:
    """The registry as a service of a daemon process."""
    store = FunctionStore(opts.function_dir)
    authn = authenticator_of(opts, [opts.host], daemon="stubs", admin_only=admin_only)
    app = make_app(
        store,
        RuntimeCatalog.load(opts.runtime_dir),
        default_account=opts.default_account_id,
        max_code_size=opts.max_code_size,
        public_url=opts.public_url,
        middlewares=[auth_middleware(authn, applies=needs_key)] if authn is not None else [],
        secrets=SecretStore(Path(opts.auth_dir)),
    )
    if authn is not None:
        add_key_routes(app, authn.store)
    if opts.controller_url:
        add_trigger_status(app, opts.controller_url, credentials=PodCredentials(opts.auth_dir).headers,
                           ssl=client_context(opts))
    add_stubs_observability(app, store)
    return Service("stubs", app, [TCPEndpoint(opts.host, opts.port, server_tls(opts))],
                   shutdown_timeout=opts.shutdown_timeout,
                   listening={"function_dir": str(store.root), "auth": authn is not None})


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_options("stubs", OPTIONS, argv)
    setup_logging(opts, daemon="stubs")
    run_daemon([stubs_service(opts)])
