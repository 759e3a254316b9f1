"""Property-based fuzzing of the stubs and controller APIs from their OpenAPI documents
(schemathesis): no client mistake gets a 5xx, and every answer conforms to the document (status,
content type, body schema).

Real applications on real loopback sockets, served from a thread of their own (schemathesis'
client is synchronous): the stubs with a store in a temporary directory, and the controller whose
registry is those stubs. Only the funclet is in memory (tests/test_pool.py's FakeFunclet): random
invocations end in the registry's 404 or the controller's 400/403 before a sandbox is needed.
The budget is bounded (``max_examples`` per operation).
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from controller.app import create_app
from controller.options import parse_controller_options
from controller.registry import Registry
from easyfaas.openapi import load_document
from easyfaas.runtimes import RuntimeCatalog
from stubs.app import make_app
from stubs.store import FunctionStore
from tests.test_pool import FakeFunclet
from tests.test_stubs import CODE_A, write_runtimes

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))

stubs_schema = schemathesis.openapi.from_dict(load_document("stubs"))
controller_schema = schemathesis.openapi.from_dict(load_document("controller"))


class Daemons:
    """The stubs and the controller on one event loop in a thread; base URLs once started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.stubs_url = ""
        self.controller_url = ""
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def _start(self) -> None:
        write_runtimes(self.root / "runtime")
        stubs = make_app(FunctionStore(self.root / "funcData"), RuntimeCatalog.load(self.root / "runtime"))
        self.stubs_url = await self._serve(stubs)
        opts = parse_controller_options(["--task-interval", "3600", "--state-dir", str(self.root / "state")])
        controller = create_app(opts, funclet=FakeFunclet(1), registry=Registry(self.stubs_url))  # type: ignore[arg-type]
        self.controller_url = await self._serve(controller)

    async def _stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _post(url: str, body: Any) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status in (200, 201)


@pytest.fixture(scope="module")
def daemons() -> Iterator[Daemons]:
    with tempfile.TemporaryDirectory(prefix="ef-fuzz-") as tmp:
        d = Daemons(Path(tmp))
        d.start()
        try:
            # Something for the generated requests to find besides 404s.
            _post(f"{d.stubs_url}/v1/functions/hello",
                  {"Runtime": "python3", "Handler": "index.handler", "Code": base64.b64encode(CODE_A).decode()})
            _post(f"{d.stubs_url}/v1/functions/hello/triggers",
                  {"Type": "http", "Config": {"Methods": ["GET"], "Path": "/hello"}})
            yield d
        finally:
            d.stop()


def _bounded(case: Any) -> Any:
    # The change feeds are long polls: a generated wait would hold the request for up to a minute.
    if case.query and "wait" in case.query:
        case.query["wait"] = "0"
    return case


@stubs_schema.parametrize()
@FUZZ_SETTINGS
def test_stubs_api_conforms(case: Any, daemons: Daemons) -> None:
    _bounded(case).call_and_validate(base_url=daemons.stubs_url, checks=CHECKS, timeout=30)


@controller_schema.parametrize()
@FUZZ_SETTINGS
def test_controller_api_conforms(case: Any, daemons: Daemons) -> None:
    _bounded(case).call_and_validate(base_url=daemons.controller_url, checks=CHECKS, timeout=30)
