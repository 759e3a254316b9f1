"""Property-based fuzzing of the stubs and controller APIs from their OpenAPI documents
(schemathesis): no client mistake gets a 5xx, and every answer conforms to the document (status,
content type, body schema).

Real applications on real loopback sockets behind the daemons' own listeners, served from a
thread of their own (schemathesis' client is synchronous): the stubs daemon's application with a
store in a temporary directory, and the controller (behind its front door) whose registry is those
stubs, invoking a runtime that speaks the frame protocol on a real unix socket
(tests/fakes/frame_runtime.py). Only the funclet is in memory (tests/fakes/funclet_api.py).

A function's own error is a 500 by contract (``X-easyfaas-Function-Error``), and so is a not-ready
``/readyz``'s 503: ``not_a_server_error`` is waived for those answers only. The budget is bounded:
``max_examples`` per operation (``EASYFAAS_FUZZ_EXAMPLES`` raises it for a longer hunt).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import threading
import urllib.error
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

from controller.app import FrontDoorEndpoint, create_app
from controller.options import parse_controller_options
from controller.registry import Registry
from easyfaas.daemon import TCPEndpoint
from easyfaas.http import FUNCTION_ERROR, JsonErrorAppRunner
from easyfaas.openapi import load_document
from easyfaas.config import parse_options
from stubs.daemon import OPTIONS as STUBS_OPTIONS, stubs_service
from easyfaas.pod_names import free_port
from tests.fakes.funclet_api import FakeFunclet
from tests.fakes.frame_runtime import FrameRuntime
from tests.fakes.stubs_app import CODE_A, write_runtimes

pytestmark = pytest.mark.slow

# EASYFAAS_FUZZ_EXAMPLES raises the budget for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("EASYFAAS_FUZZ_EXAMPLES", "30"))


@schemathesis.check
def not_a_platform_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, but for the function's own failures (a 500 that says so) and a
    readiness probe's "not ready" (503 is its answer by contract)."""
    if response.status_code == 500 and response.headers.get(FUNCTION_ERROR.lower()):
        return None
    if response.status_code == 503 and case.operation.path == "/readyz":
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [not_a_platform_error, status_code_conformance, content_type_conformance, response_schema_conformance]
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
        self.runtime = FrameRuntime(str(root / "c0.sock"))
        self.stubs_url = ""
        self.controller_url = ""
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, app: web.Application, endpoint: Any) -> str:
        """``app`` behind ``endpoint`` as the daemons serve it (easyfaas/daemon.py)."""
        runner = JsonErrorAppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        self.runners.append(runner)
        await endpoint.site(runner).start()
        return f"http://127.0.0.1:{endpoint.port}"

    async def _start(self) -> None:
        write_runtimes(self.root / "runtime")
        stubs = stubs_service(parse_options("stubs", STUBS_OPTIONS, [
            "--function-dir", str(self.root / "funcData"), "--runtime-dir", str(self.root / "runtime")])).app
        self.stubs_url = await self._serve(stubs, TCPEndpoint("127.0.0.1", free_port()))
        opts = parse_controller_options(["--task-interval", "3600", "--state-dir", str(self.root / "state")])
        await self.runtime.start()
        funclet = FakeFunclet(1, socket_for=lambda cid: str(self.root / f"{cid}.sock"))
        controller = create_app(opts, funclet=funclet, registry=Registry(self.stubs_url))  # type: ignore[arg-type]
        # The controller's own listener: invocations through the front door, the rest through aiohttp.
        self.controller_url = await self._serve(controller, FrontDoorEndpoint("127.0.0.1", free_port(), 5.0))

    async def _stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        await self.runtime.stop()

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
            # hello: $LATEST and version 1; a second for its runtime's sleeps to stay short.
            _post(f"{d.stubs_url}/v1/functions/hello:1", {"Runtime": "python3", "Handler": "index.handler",
                                                          "Timeout": 1, "Code": base64.b64encode(CODE_A).decode()})
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


def test_function_logs_refuse_an_invalid_account_id(daemons: Daemons) -> None:
    """Found by the fuzzing: the registry's 400 for such a caller came back as a 500."""
    request = urllib.request.Request(f"{daemons.controller_url}/v1/functions/hello/logs",
                                     headers={"X-easyfaas-Account-Id": "WabT[2KjU"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["Code"] == "InvalidParameterValueException"
