"""Platform error JSON (easyfaas/errors.py) and the shared aiohttp middlewares (easyfaas/http.py)."""

from __future__ import annotations

import json
from typing import AsyncIterator

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from easyfaas import errors, http
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
    (errors.InvalidRequest, "InvalidRequestException", 400),
    (errors.AccountProblem, "AccountProblemException", 403),
    (errors.NotImplementedFeature, "NotImplementedException", 500),
    (errors.BadGateway, "BadGatewayException", 502),
    (errors.ServiceUnavailable, "ServiceUnavailableException", 503),
    (errors.RequestTimeout, "RequestTimeoutException", 504),
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


def test_every_code_has_one_class() -> None:
    classes = [cls for cls, _, _ in EXPECTED]
    assert len({cls.code for cls in classes}) == len(classes)
    for cls in classes:
        assert type(errors.FaasError.of(cls.code)) is cls
        assert type(errors.error_from_dict({"Code": cls.code})) is cls


def test_of_unknown_code_keeps_code_and_status_without_touching_classes() -> None:
    err = errors.FaasError.of("QuotaExceededException", 429, "Quota exceeded", "too many functions")
    assert isinstance(err, errors.UnknownCodeError) and isinstance(err, errors.FaasError)
    assert err.to_dict() == {"Code": "QuotaExceededException", "Cause": "too many functions",
                             "Message": "Quota exceeded", "Status": 429, "Type": "User"}
    assert errors.FaasError.of("WeirdException", 200).status == 500  # no error status: a server error
    assert errors.FaasError.of("WeirdException").status == 500
    # Codes are made by constructors, never by assigning to a shared class.
    assert (errors.FaasError.code, errors.FaasError.status) == ("ServiceException", 500)
    assert (errors.ServiceError.code, errors.UnknownCodeError.code) == ("ServiceException", "ServiceException")


def test_a_status_given_to_a_class() -> None:
    err = errors.InvalidRequest("header too large", status=431)
    assert (err.code, err.status, err.type) == ("InvalidRequestException", 431, "User")
    assert errors.InvalidRequest.status == 400 and errors.InvalidRequest().status == 400
    assert json.loads(err.to_json()) == err.to_dict()


def test_error_from_dict_status_rules() -> None:
    # A known code keeps the status the peer sent with it, else its own.
    assert errors.error_from_dict({"Code": "InvalidRequestException", "Status": 431}).status == 431
    assert errors.error_from_dict({"Code": "ResourceNotFoundException"}, status=500).status == 404
    # An unknown code takes the body's status, else the HTTP status, else 500.
    assert errors.error_from_dict({"Code": "XException", "Status": 418}, status=500).status == 418
    assert errors.error_from_dict({"Code": "XException", "Status": True}, status=409).status == 409
    assert errors.error_from_dict({"Code": "XException"}).status == 500
    odd = errors.error_from_dict({"Code": "XException", "Cause": 5, "Message": ["m"]})
    assert (odd.cause, odd.message) == ("", errors.FaasError.default_message)


@pytest.mark.parametrize("body", [None, "", "<html>bad gateway</html>", [1, 2], {"code": "lowercase"},
                                  {"Code": 3}])
def test_error_from_dict_of_something_else(body: object) -> None:
    assert not errors.is_error_body(body)
    err = errors.error_from_dict(body, status=502)
    assert type(err) is errors.ServiceError and "HTTP 502" in err.cause
    if isinstance(body, str) and body:
        assert body in err.cause


def test_funclet_client_errors_parse_through_error_from_dict() -> None:
    from controller.funclet_client import FuncletError

    conflict = FuncletError.of_response(409, errors.ResourceConflict("container c1 is warm").to_dict())
    assert (conflict.status, conflict.code, conflict.message) == (409, "ResourceConflictException",
                                                                  "container c1 is warm")
    no_cause = FuncletError.of_response(404, {"Code": "ResourceNotFoundException", "Message": "gone"})
    assert (no_cause.code, no_cause.message) == ("ResourceNotFoundException", "gone")
    text = FuncletError.of_response(502, "Bad Gateway")
    assert (text.status, text.code) == (502, "ServiceException") and "Bad Gateway" in text.message


def test_registry_reads_error_bodies_through_error_from_dict() -> None:
    from controller.registry import _cause_of

    assert _cause_of(errors.ResourceNotFound("function f not found").to_json()) == "function f not found"
    assert _cause_of(b'{"Code": "XException", "Message": "only a message"}') == "only a message"
    assert _cause_of(b"no such runtime") == "" and _cause_of(b'{"other": 1}') == ""


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
    assert body["Message"] == "Bad Request" and body["Type"] == "User"


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
    # The rest of the invoke API's vocabulary, as the original names it on the wire.
    assert (http.FUNCTION_ERROR, http.FUNCTION_ERROR_UNHANDLED) == ("X-easyfaas-Function-Error", "Unhandled")
    assert (http.INVOKE_TYPE, http.INVOKE_TYPE_EVENT, http.INVOKE_TYPE_REQUEST_RESPONSE) == (
        "X-easyfaas-Invoke-Type", "event", "RequestResponse")
    assert (http.LOG_TYPE, http.LOG_TYPE_TAIL, http.LOG_RESULT) == ("Log-Type", "Tail", "X-Bce-Log-Result")
    assert (http.LOG_TO_BODY, http.EXEC_TIME) == ("Log-To-Body", "X-easyfaas-Function-Exectime")
    assert (http.QUERY_QUALIFIER, http.QUERY_LOG_TYPE, http.QUERY_LOG_TO_BODY) == ("Qualifier", "logType", "logToBody")
    resp = error_response(errors.TooManyRequests("empty runtime"), headers={"X-easyfaas-Function-Error": "Unhandled"})
    assert resp.status == 429 and resp.headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert json.loads(resp.body)["Cause"] == "empty runtime"


async def test_httptrigger_before_an_unreachable_controller_is_bad_gateway() -> None:
    import aiohttp

    from httptrigger.app import controller_call
    from httptrigger.gateway import Gateway
    from httptrigger.routes import parse_function_url
    from httptrigger.server import HttpServer

    # Port 1 on loopback: nothing listens there, the connection is refused at once. A function URL
    # answers as a Lambda function URL does: 502, the details only in the logs.
    async with aiohttp.ClientSession() as session:
        server = HttpServer(Gateway(controller_call("http://127.0.0.1:1", session)).handle, max_body_size=1 << 20)
        await server.start("127.0.0.1", 0)
        try:
            async with session.get(f"http://127.0.0.1:{server.port}/someone/fn") as resp:
                assert resp.status == 502
                assert await resp.json() == {"message": "Internal Server Error"}
        finally:
            await server.close(1)
    # A version must be $LATEST or ASCII digits (str.isdigit() would take "١", an Arabic-Indic one):
    # anything else after the name is the path the function gets.
    url = parse_function_url("/someone/fn/\u0661")
    assert url is not None and (url.qualifier, url.raw_path) == ("$LATEST", "/\u0661")
