"""The OpenAPI documents (easyfaas/openapi/) are valid, served, and in step with the routes.

Every route registered on the stubs and controller applications is in its document and every
documented operation is a route, so a route added without documenting it fails here. The response
check that validates every answer of the test suite (easyfaas/openapi/check.py, enabled by
tests/fakes/openapi_check.py) is shown to catch an answer that breaks its document.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from controller.app import create_app
from controller.options import parse_controller_options
from controller.registry import Registry
from easyfaas.openapi import DOCUMENTS, load_document
from easyfaas.openapi.check import response_check_middleware
from easyfaas.config import parse_options
from stubs.daemon import OPTIONS as STUBS_OPTIONS, stubs_service
from tests.fakes.funclet_api import FakeFunclet
from tests.fakes.stubs_app import write_runtimes

_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def documented(name: str) -> set[tuple[str, str]]:
    document = load_document(name)
    out = set()
    for path, item in document["paths"].items():
        if "$ref" in item:  # a path item shared through components.pathItems
            item = document["components"]["pathItems"][item["$ref"].rsplit("/", 1)[1]]
        out |= {(method.upper(), path) for method in item if method in _METHODS}
    return out


def routed(app: web.Application) -> set[tuple[str, str]]:
    # aiohttp adds a HEAD beside every GET; the documents describe the GETs.
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"}


def stubs_app(tmp_path: Path, *, keys: bool = False) -> web.Application:
    """The stubs daemon's application, as its service builds it (with its observability routes);
    with ``keys`` required, the key API is routed too."""
    write_runtimes(tmp_path / "runtime")
    opts = parse_options("stubs", STUBS_OPTIONS, ["--function-dir", str(tmp_path / "funcData"),
                                                  "--runtime-dir", str(tmp_path / "runtime"),
                                                  "--auth", "required" if keys else "off",
                                                  "--auth-dir", str(tmp_path / "auth")])
    return stubs_service(opts).app


def controller_app(tmp_path: Path) -> web.Application:
    opts = parse_controller_options(["--state-dir", str(tmp_path / "state")])
    return create_app(opts, funclet=FakeFunclet(1), registry=Registry("http://127.0.0.1:9"))  # type: ignore[arg-type]


def test_documents_pass_the_openapi_validator() -> None:
    for name in DOCUMENTS:
        document = load_document(name)
        assert document["openapi"].startswith("3.1")
        validate(document)


def test_stubs_routes_and_document_match(tmp_path: Path) -> None:
    routes, paths = routed(stubs_app(tmp_path, keys=True)), documented("stubs")
    assert routes - paths == set(), "routes missing from easyfaas/openapi/stubs.yaml"
    assert paths - routes == set(), "documented operations that are not routes"


async def test_controller_routes_and_document_match(tmp_path: Path) -> None:
    routes, paths = routed(controller_app(tmp_path)), documented("controller")
    assert routes - paths == set(), "routes missing from easyfaas/openapi/controller.yaml"
    assert paths - routes == set(), "documented operations that are not routes"


async def test_stubs_serve_their_document(tmp_path: Path) -> None:
    async with TestClient(TestServer(stubs_app(tmp_path))) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == json.loads(json.dumps(load_document("stubs")))


async def test_controller_serves_its_document(tmp_path: Path) -> None:
    app = controller_app(tmp_path)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert (await resp.json())["info"]["title"] == "EasyFaaS controller"


async def test_the_response_check_records_an_answer_that_breaks_the_document(tmp_path: Path) -> None:
    findings = tmp_path / "findings.jsonl"
    document = load_document("stubs")
    app = web.Application(middlewares=[response_check_middleware(document, "stubs", str(findings))])

    async def wrong_runtimes(_: web.Request) -> web.Response:
        return web.json_response({"Runtimes": "not a list"})

    async def wrong_status(_: web.Request) -> web.Response:
        return web.json_response({"Code": "X", "Message": "m", "Status": 418, "Type": "User"}, status=418)

    async def right(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/v1/runtimes", wrong_runtimes)
    app.router.add_get("/v1/functions", wrong_status)
    app.router.add_get("/healthz", right)
    async with TestClient(TestServer(app)) as client:
        for path in ("/v1/runtimes", "/v1/functions", "/healthz", "/not-a-route"):
            await (await client.get(path)).read()
    lines = [json.loads(line) for line in findings.read_text().splitlines()]
    assert [(f["path"], f["status"]) for f in lines] == [("/v1/runtimes", 200), ("/v1/functions", 418)]
    assert all(f["errors"] for f in lines)


async def test_the_gateway_serves_its_document() -> None:
    from httptrigger.gateway import Gateway
    from httptrigger.request import HttpRequest

    async def never(*_: object) -> tuple[int, dict[str, str], bytes]:
        raise AssertionError("no invocation for the document")

    gateway = Gateway(never)
    answer = await gateway.handle(HttpRequest("GET", "/openapi.json", "", []))
    assert answer.status == 200
    assert json.loads(answer.body) == json.loads(json.dumps(load_document("httptrigger")))


async def test_the_front_doors_invocations_are_checked_too(tmp_path: Path) -> None:
    from controller.invoke import InvokeReply
    from easyfaas.openapi.check import CheckedInvoker

    class Replies:
        max_body_size = 1024

        async def invoke(self, ref: str, *_: object, **__: object) -> InvokeReply:
            if ref == "odd":  # a status the invoke operation does not have
                return InvokeReply(418, {"Content-Type": "application/json"}, b"{}")
            return InvokeReply(202, {"X-easyfaas-Request-Id": "r1", "Location": "/v1/invocations/r1"}, b"")

    findings = tmp_path / "findings.jsonl"
    invoker = CheckedInvoker(Replies(), load_document("controller"), str(findings))
    assert invoker.max_body_size == 1024  # everything else is the invoker's own
    assert (await invoker.invoke("hello", {}, {}, b"{}", "r1")).status == 202
    assert (await invoker.invoke("odd", {}, {}, b"{}", "r2")).status == 418
    lines = [json.loads(line) for line in findings.read_text().splitlines()]
    assert [(f["path"], f["status"]) for f in lines] == [("/v1/functions/odd/invocations", 418)]
