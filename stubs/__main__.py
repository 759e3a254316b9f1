"""Entry point of the stubs daemon (function registry): ``python -m stubs`` / ``easyfaas-stubs``."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, Sequence

import structlog
from aiohttp import web

from easyfaas.config import Option, parse_options, parse_size
from easyfaas.heap import freeze_startup_heap
from easyfaas.http import JsonErrorAppRunner
from easyfaas.logging import setup_logging
from easyfaas.runtimes import RuntimeCatalog
from stubs.app import DEFAULT_ACCOUNT_ID, make_app
from stubs.store import FunctionStore

log = structlog.get_logger(__name__)

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
]


async def serve(opts: Any) -> None:
    """Run the registry until SIGTERM or SIGINT, then drain and stop."""
    store = FunctionStore(opts.function_dir)
    runtimes = RuntimeCatalog.load(opts.runtime_dir)
    app = make_app(
        store,
        runtimes,
        default_account=opts.default_account_id,
        max_code_size=opts.max_code_size,
        public_url=opts.public_url,
    )
    runner = JsonErrorAppRunner(app, shutdown_timeout=opts.shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, opts.host, opts.port)
        await site.start()
        log.info("stubs_listening", host=opts.host, port=opts.port, function_dir=str(store.root),
                 frozen_objects=freeze_startup_heap())
        await stop.wait()
        log.info("stubs_stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_options("stubs", OPTIONS, argv)
    setup_logging(opts, daemon="stubs")
    try:
        asyncio.run(serve(opts))
    except OSError as exc:
        log.error("stubs_failed", error=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
