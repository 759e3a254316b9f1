"""Platform error JSON (easyfaas/errors.py) and the shared aiohttp middlewares (easyfaas/http.py)."""

from __future__ import annotations

import json
from typing import AsyncIterator

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from easyfaas import errors
from easyfaas.http import (
    ACCOUNT_ID,
    REQUEST_ID,
    REQUEST_ID_KEY,
    error_middleware,
    error_response,
    read_json,
    request_id_middleware,
)

EXPECTED = [
    (errors.InvalidParameterValue, "InvalidParameterValueException", 400),
    (errors.InvalidRequestContent, "InvalidRequestContentException", 400),
    (errors.ValidationError, "ValidationException", 400),
    (errors.RequestTooLarge, "RequestTooLargeException", 413),
    (errors.InvalidInvokeCaller, "InvalidInvokeCallerException", 403),
    (errors.AccessDenied, "UnrecognizedClientException", 403),
    (errors.ResourceNotFound, "ResourceNotFoundException", 404),
    (errors.MethodNotAllowed, "MethodNotAllowedException", 405),
    (errors.ResourceConflict, "ResourceConflictException", 409),
    (errors.TooManyRequests, "TooManyRequestsException", 429),
    (errors.ServiceError, "ServiceException", 500),
    (errors.InvalidRuntime, "InvalidRuntimeException", 502),
]


@pytest.mark.parametrize("cls, code, status", EXPECTED)
def test_codes_and_statuses(cls: type[errors.FaasError], code: str, status: int) -> None:
    err = cls("why")
    assert (err.code, err.status) == (code, status)
    assert err.to_dict()["Type"] == ("User" if status < 500 else "Server")
    assert isinstance(err, errors.FaasError) and isinstance(err, Exception)


def test_body_shape_and_key_order() -> None:
    body = errors.InvalidInvokeCaller("owner id a caller id b").to_dict()
    assert list(body) == ["Code", "Cause", "Message", "Status", "Type"]
    assert body == {
        "Code": "InvalidInvokeCallerException",
        "Cause": "owner id a caller id b",
        "Message": "Invalid caller id",
        "Status": 403,
        "Type": "User",
    }
    assert list(errors.TooManyRequests().to_dict()) == ["Code", "Message", "Status", "Type"]


def test_original_messages() -> None:
    assert errors.RequestTooLarge().message == (
        "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    )
    assert errors.InvalidRequestContent().message == "The request body could not be parsed as JSON"
    assert errors.ResourceNotFound().message == "The resource specified in the request does not exist"
    assert errors.ServiceError().message == "Service encountered an internal error"
    assert errors.ValidationError("x", message="custom").message == "custom"


def test_error_from_dict_round_trip() -> None:
    for cls, _, _ in EXPECTED:
        original = cls("some cause")
        rebuilt = errors.error_from_dict(json.loads(json.dumps(original.to_dict())))
        assert type(rebuilt) is cls and rebuilt.to_dict() == original.to_dict()
    unknown = errors.error_from_dict({"Code": "BadGatewayException", "Message": "m", "Status": 502})
    assert (unknown.code, unknown.status, unknown.message) == ("BadGatewayException", 502, "m")
    garbage = errors.error_from_dict("not json object", status=503)
    assert garbage.code == "ServiceException" and "503" in garbage.cause


# ---- middlewares ---------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    seen: dict[str, object] = {}

    async def raise_faas(request: web.Request) -> web.Response:
        raise errors.ResourceNotFound("function f not found")

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    async def echo_json(request: web.Request) -> web.Response:
        return web.json_response({"got": await read_json(request, max_size=100)})

    async def context(request: web.Request) -> web.Response:
        seen["ctx"] = structlog.contextvars.get_contextvars()
        return web.json_response({"request_id": request[REQUEST_ID_KEY]})

    async def bad_request(request: web.Request) -> web.Response:
        raise web.HTTPBadRequest(text="custom text")

    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    app.router.add_get("/faas", raise_faas)
    app.router.add_get("/crash", crash)
    app.router.add_post("/json", echo_json)
    app.router.add_get("/ctx", context)
    app.router.add_get("/bad", bad_request)
    async with TestClient(TestServer(app)) as c:
        c.seen = seen  # type: ignore[attr-defined]
        yield c


async def test_faas_error_becomes_json(client: TestClient) -> None:
    resp = await client.get("/faas")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert await resp.json() == errors.ResourceNotFound("function f not found").to_dict()


async def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    resp = await client.get("/nowhere")
    body = await resp.json()
    assert resp.status == 404 and body["Code"] == "ResourceNotFoundException" and "/nowhere" in body["Cause"]
    resp = await client.delete("/faas")
    body = await resp.json()
    assert resp.status == 405 and body["Code"] == "MethodNotAllowedException" and body["Type"] == "User"
    assert "GET" in resp.headers["Allow"]


async def test_crash_is_500_without_details(client: TestClient) -> None:
    resp = await client.get("/crash", headers={REQUEST_ID: "req-123"})
    body = await resp.json()
    assert resp.status == 500
    assert body["Code"] == "ServiceException" and body["Type"] == "Server"
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert "req-123" in body["Cause"]
    assert resp.headers[REQUEST_ID] == "req-123"


async def test_other_http_exceptions_get_the_json_shape(client: TestClient) -> None:
    resp = await client.get("/bad")
    body = await resp.json()
    assert resp.status == 400 and body["Code"] == "BadRequestException" and body["Cause"] == "custom text"


async def test_request_id_echoed_generated_and_bound(client: TestClient) -> None:
    resp = await client.get("/ctx", headers={REQUEST_ID: "abc-1"})
    assert resp.headers[REQUEST_ID] == "abc-1" and (await resp.json())["request_id"] == "abc-1"
    assert client.seen["ctx"] == {"request_id": "abc-1"}  # type: ignore[attr-defined]
    resp = await client.get("/ctx")
    generated = resp.headers[REQUEST_ID]
    assert len(generated) == 36 and (await resp.json())["request_id"] == generated
    resp = await client.get("/ctx", headers={REQUEST_ID: "bad id with spaces"})
    assert resp.headers[REQUEST_ID] != "bad id with spaces"
    # error responses carry the id too
    resp = await client.get("/nowhere", headers={REQUEST_ID: "r-404"})
    assert resp.headers[REQUEST_ID] == "r-404"


async def test_read_json(client: TestClient) -> None:
    assert await (await client.post("/json", data=b"")).json() == {"got": {}}
    assert await (await client.post("/json", data=b'{"a": [1]}')).json() == {"got": {"a": [1]}}
    resp = await client.post("/json", data=b"{nope")
    body = await resp.json()
    assert resp.status == 400 and body["Code"] == "InvalidRequestContentException"
    assert body["Message"] == "The request body could not be parsed as JSON"
    resp = await client.post("/json", data=b'{"a": "' + b"x" * 200 + b'"}')
    body = await resp.json()
    assert resp.status == 413 and body["Code"] == "RequestTooLargeException" and "100 bytes" in body["Cause"]

    async def chunked():  # no Content-Length: the limit must hold while streaming
        for _ in range(10):
            yield b"x" * 50

    resp = await client.post("/json", data=chunked())
    assert resp.status == 413


def test_header_names() -> None:
    assert REQUEST_ID == "X-easyfaas-Request-Id" and ACCOUNT_ID == "X-easyfaas-Account-Id"
    resp = error_response(errors.TooManyRequests("empty runtime"), headers={"X-easyfaas-Function-Error": "Unhandled"})
    assert resp.status == 429 and resp.headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert json.loads(resp.body)["Cause"] == "empty runtime"
