"""Payload 1.0 / 2.0 events and AWS's response mapping (httptrigger/payload_v*.py, response.py, cors.py)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httptrigger import payload_v1, payload_v2
from httptrigger.config import parse_http_config
from httptrigger.cors import preflight_headers, response_headers
from httptrigger.request import HttpRequest, clf_time
from httptrigger.response import Failure, Product, answer_of_reply, error_answer, map_result


def request(**kw: object) -> HttpRequest:
    base = dict(method="POST", raw_path="/api/users/42", raw_query="a=1&a=2&b=x%20y",
                headers=[("Host", "api.example.com:8080"), ("User-Agent", "curl/8"), ("X-Multi", "1"),
                         ("x-multi", "2"), ("Cookie", "s=1; t=2"), ("Cookie", "u=3"),
                         ("Content-Type", "application/json")],
                body=b'{"k": 1}', source_ip="10.0.0.9", request_id="rid-1", time_epoch_ms=1583348638390)
    base.update(kw)
    return HttpRequest(**base)  # type: ignore[arg-type]


def test_payload_v2_fields() -> None:
    ev = payload_v2.build_event(request(), account_id="acct", route_key="POST /api/users/{id}",
                                path_parameters={"id": "42"})
    assert ev["version"] == "2.0" and ev["routeKey"] == "POST /api/users/{id}"
    assert ev["rawPath"] == "/api/users/42" and ev["rawQueryString"] == "a=1&a=2&b=x%20y"
    assert ev["cookies"] == ["s=1", "t=2", "u=3"]
    assert ev["headers"]["x-multi"] == "1,2" and "cookie" not in ev["headers"]
    assert ev["headers"]["host"] == "api.example.com:8080"
    assert ev["headers"]["x-forwarded-for"] == "10.0.0.9" and ev["headers"]["x-forwarded-proto"] == "http"
    assert ev["queryStringParameters"] == {"a": "1,2", "b": "x y"}
    assert ev["pathParameters"] == {"id": "42"}
    rc = ev["requestContext"]
    assert rc["accountId"] == "acct" and rc["domainName"] == "api.example.com" and rc["domainPrefix"] == "api"
    assert rc["apiId"] == "api" and rc["requestId"] == "rid-1" and rc["stage"] == "$default"
    assert rc["routeKey"] == "POST /api/users/{id}"
    assert rc["http"] == {"method": "POST", "path": "/api/users/42", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.9",
                          "userAgent": "curl/8"}
    assert rc["time"] == "04/Mar/2020:19:03:58 +0000" and rc["timeEpoch"] == 1583348638390
    assert ev["body"] == '{"k": 1}' and ev["isBase64Encoded"] is False
    assert list(ev)[:4] == ["version", "routeKey", "rawPath", "rawQueryString"]


def test_payload_v2_leaves_out_what_is_absent_and_base64s_binary() -> None:
    ev = payload_v2.build_event(request(raw_query="", headers=[], body=b"", server_port=8080), account_id="a")
    assert ev["routeKey"] == "$default" and ev["requestContext"]["http"]["userAgent"] == ""
    assert ev["headers"] == {"x-forwarded-for": "10.0.0.9", "x-forwarded-proto": "http", "x-forwarded-port": "8080"}
    for absent in ("cookies", "queryStringParameters", "pathParameters", "body"):
        assert absent not in ev
    assert ev["isBase64Encoded"] is False
    ev = payload_v2.build_event(request(headers=[("X-Forwarded-For", "1.1.1.1")]), account_id="a")
    assert ev["headers"]["x-forwarded-for"] == "1.1.1.1, 10.0.0.9"
    ev = payload_v2.build_event(request(headers=[("Content-Type", "image/png")], body=b"\x89PNG\x00"), account_id="a")
    assert ev["isBase64Encoded"] is True and base64.b64decode(ev["body"]) == b"\x89PNG\x00"
    ev = payload_v2.build_event(request(headers=[("Content-Type", "text/plain")], body=b"\xff"), account_id="a")
    assert ev["isBase64Encoded"] is True  # not UTF-8
    ev = payload_v2.build_event(request(headers=[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                                        body=b"abc"), account_id="a")
    assert ev["isBase64Encoded"] is True


def test_payload_v1_fields() -> None:
    ev = payload_v1.build_event(request(), account_id="acct", resource="/api/users/{id}",
                                route_key="POST /api/users/{id}", path_parameters={"id": "42"})
    assert ev["version"] == "1.0" and ev["resource"] == "/api/users/{id}" and ev["path"] == "/api/users/42"
    assert ev["httpMethod"] == "POST"
    assert ev["headers"]["x-multi"] == "2" and ev["multiValueHeaders"]["x-multi"] == ["1", "2"]
    assert ev["multiValueHeaders"]["cookie"] == ["s=1; t=2", "u=3"]
    assert ev["queryStringParameters"] == {"a": "2", "b": "x y"}
    assert ev["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x y"]}
    assert ev["pathParameters"] == {"id": "42"} and ev["stageVariables"] is None
    rc = ev["requestContext"]
    assert rc["identity"]["sourceIp"] == "10.0.0.9" and rc["identity"]["userAgent"] == "curl/8"
    assert rc["httpMethod"] == "POST" and rc["resourcePath"] == "/api/users/{id}" and rc["path"] == "/api/users/42"
    assert rc["requestTime"] == clf_time(1583348638390) and rc["requestTimeEpoch"] == 1583348638390
    assert ev["body"] == '{"k": 1}' and ev["isBase64Encoded"] is False
    ev = payload_v1.build_event(request(raw_query="", body=b""), account_id="a", resource="/", route_key="GET /")
    assert ev["queryStringParameters"] is None and ev["multiValueQueryStringParameters"] is None
    assert ev["body"] is None and ev["pathParameters"] is None


def _result(value: object) -> bytes:
    return json.dumps(value).encode()


def test_v2_results_without_status_code_are_json_200() -> None:
    for value in ({"a": 1}, [1, 2], 3, "text"):
        a = map_result(_result(value), "application/json", "2.0")
        assert a.status == 200 and a.headers == [("Content-Type", "application/json")] and json.loads(a.body) == value
    a = map_result(b"Hello", "text/plain; charset=utf-8", "2.0")  # a handler that returned a string
    assert a.status == 200 and a.body == b'"Hello"'


def test_v2_structured_result() -> None:
    a = map_result(_result({"statusCode": 201, "headers": {"X-A": "1", "X-N": 5, "Content-Length": "99"},
                            "multiValueHeaders": {"X-M": ["a", "b"]}, "cookies": ["c=1; Path=/", "d=2"],
                            "body": "created"}), "application/json", "2.0")
    assert a.status == 201 and a.body == b"created"
    assert a.headers == [("X-M", "a"), ("X-M", "b"), ("X-A", "1"), ("X-N", "5"), ("Set-Cookie", "c=1; Path=/"),
                         ("Set-Cookie", "d=2")]
    a = map_result(_result({"statusCode": 200, "body": base64.b64encode(b"\x00\xff").decode(),
                            "isBase64Encoded": True}), "application/json", "2.0")
    assert a.body == b"\x00\xff"
    a = map_result(_result({"statusCode": 204}), "application/json", "2.0")
    assert a.status == 204 and a.body == b"" and a.headers == []


def test_v1_result_rules() -> None:
    a = map_result(_result({"statusCode": 200, "headers": {"X-A": "single", "x-b": "1"},
                            "multiValueHeaders": {"x-a": ["m1", "m2"]}, "cookies": ["ignored=1"], "body": "ok"}),
                   "application/json", "1.0")
    assert a.headers == [("x-a", "m1"), ("x-a", "m2"), ("x-b", "1")] and a.body == b"ok"
    with pytest.raises(ValueError):
        map_result(_result({"no": "status"}), "application/json", "1.0")
    with pytest.raises(ValueError):
        map_result(b"Hello", "text/plain", "1.0")


@pytest.mark.parametrize("bad", [
    {"statusCode": 99}, {"statusCode": 600}, {"statusCode": True}, {"statusCode": 1.5},
    {"statusCode": 200, "body": "!!", "isBase64Encoded": True},
    {"statusCode": 200, "headers": {"X-A": "a\r\nInjected: 1"}},
    {"statusCode": 200, "headers": {"X-A": "a\nb"}},
    {"statusCode": 200, "headers": {"Bad Name": "x"}},
    {"statusCode": 200, "headers": {"X\r\nY": "x"}},
    {"statusCode": 200, "cookies": ["a=1\r\nX: y"]},
    {"statusCode": 200, "multiValueHeaders": {"X": ["ok", "no\rpe"]}},
    {"statusCode": 200, "body": {"not": "a string"}},
    {"statusCode": 200, "headers": ["X", "Y"]},
    {"statusCode": 200, "headers": {"X": {"nested": 1}}},
])
@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_invalid_results_become_502_with_nothing_of_them_sent(bad: dict[str, object], version: str) -> None:
    if version == "1.0" and "cookies" in bad:
        return  # payload 1.0 has no cookies field: it is not read
    for product in (Product.ROUTE, Product.URL):
        a = answer_of_reply(200, {"content-type": "application/json"}, _result(bad), version=version, product=product)
        assert a.status == 502 and a.failure is Failure.MALFORMED
        assert a.headers == [("Content-Type", "application/json")]
        assert json.loads(a.body) == {"message": "Internal Server Error"}


@pytest.mark.parametrize("status,headers,body,route,url", [
    (500, {"x-easyfaas-function-error": "Unhandled"}, b'{"errorType":"ValueError","errorMessage":"x"}',
     (500, "Internal Server Error"), (502, "Internal Server Error")),
    (500, {"x-easyfaas-function-error": "Unhandled"}, b'{"errorType":"Sandbox.Timedout","errorMessage":"t"}',
     (503, "Service Unavailable"), (502, "Internal Server Error")),
    (429, {"x-easyfaas-function-error": "Unhandled"}, b'{"Code":"TooManyRequestsException"}',
     (429, "Too Many Requests"), (429, "Too Many Requests")),
    (404, {"x-easyfaas-function-error": "Unhandled"}, b'{"Code":"ResourceNotFoundException"}',
     (404, "Not Found"), (404, "Not Found")),
    (500, {"x-easyfaas-function-error": "Unhandled"}, b'{"Code":"ServiceException","Status":500}',
     (500, "Internal Server Error"), (502, "Internal Server Error")),
])
def test_error_table(status: int, headers: dict[str, str], body: bytes, route: tuple[int, str],
                     url: tuple[int, str]) -> None:
    for product, (want_status, message) in ((Product.ROUTE, route), (Product.URL, url)):
        a = answer_of_reply(status, headers, body, version="2.0", product=product)
        assert (a.status, json.loads(a.body)) == (want_status, {"message": message})
        assert a.detail  # the details are kept for the logs
        assert b"errorType" not in a.body and b"Code" not in a.body


def test_not_found_body() -> None:
    assert error_answer(Failure.NOT_FOUND, Product.ROUTE).body == b'{"message":"Not Found"}'


def test_cors_preflight_and_response_headers() -> None:
    cors = parse_http_config({"Path": "/x", "Cors": {"AllowOrigins": ["https://app.example"],
                                                     "AllowMethods": ["GET", "post"], "AllowHeaders": ["content-type"],
                                                     "ExposeHeaders": ["x-total"], "MaxAge": 600,
                                                     "AllowCredentials": True}}).Cors
    assert cors is not None
    got = dict(preflight_headers(cors, "https://app.example", "POST", "Content-Type"))
    assert got == {"Access-Control-Allow-Origin": "https://app.example", "Vary": "Origin",
                   "Access-Control-Allow-Methods": "GET,POST", "Access-Control-Allow-Headers": "content-type",
                   "Access-Control-Max-Age": "600", "Access-Control-Allow-Credentials": "true"}
    assert preflight_headers(cors, "https://evil.example", "POST", None) == []
    assert preflight_headers(cors, "https://app.example", "DELETE", None) == []
    assert preflight_headers(cors, "https://app.example", "GET", "x-other") == []
    assert dict(response_headers(cors, "https://app.example"))["Access-Control-Expose-Headers"] == "x-total"
    assert response_headers(cors, None) == []
    star = parse_http_config({"Path": "/x", "Cors": {"AllowOrigins": ["*"]}}).Cors
    assert star is not None and dict(preflight_headers(star, "http://a", "PUT", None)) == {
        "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "PUT"}


# ---- properties ----------------------------------------------------------------------------------

_text = st.text(max_size=12)
_header_values = st.one_of(_text, st.integers(), st.booleans(), st.none(), st.lists(_text, max_size=2))


@settings(max_examples=400, deadline=None)
@given(status=st.one_of(st.integers(-5, 700), _text, st.none()),
       headers=st.one_of(st.none(), st.dictionaries(_text, _header_values, max_size=4)),
       multi=st.one_of(st.none(), st.dictionaries(_text, st.lists(_header_values, max_size=3), max_size=3)),
       cookies=st.one_of(st.none(), st.lists(st.one_of(_text, st.integers()), max_size=3)),
       body=st.one_of(st.none(), _text, st.integers()), b64=st.booleans(), version=st.sampled_from(["1.0", "2.0"]))
def test_any_result_is_a_clean_answer_or_a_502(status: object, headers: object, multi: object, cookies: object,
                                              body: object, b64: bool, version: str) -> None:
    result = {"statusCode": status, "headers": headers, "multiValueHeaders": multi, "cookies": cookies,
              "body": body, "isBase64Encoded": b64}
    a = answer_of_reply(200, {"content-type": "application/json"}, json.dumps(result).encode(), version=version,
                        product=Product.ROUTE)
    if a.failure is not None:
        assert a.status == 502 and a.headers == [("Content-Type", "application/json")]
        return
    assert 100 <= a.status <= 599
    for name, value in a.headers:
        name.encode("ascii")
        value.encode("latin-1")
        assert name and not any(c in name for c in "\r\n\x00: ") and not any(c in value for c in "\r\n\x00")
        assert name.lower() not in ("content-length", "transfer-encoding", "connection")


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(st.tuples(st.text(alphabet="abcXYZ-", min_size=1, max_size=6),
                                  st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=8)),
                        max_size=6),
       query=st.text(alphabet="ab=&%20+c", max_size=12), body=st.binary(max_size=16))
def test_any_request_gives_events_of_the_documented_shape(headers: list[tuple[str, str]], query: str,
                                                          body: bytes) -> None:
    req = request(headers=headers, raw_query=query, body=body)
    v2 = payload_v2.build_event(req, account_id="a")
    v1 = payload_v1.build_event(req, account_id="a", resource="/x", route_key="ANY /x")
    json.dumps(v2)
    json.dumps(v1)
    assert all(k == k.lower() for k in v2["headers"]) and isinstance(v2["requestContext"]["http"], dict)
    assert all(isinstance(v, str) for v in v2["headers"].values())
    assert all(isinstance(v, list) for v in v1["multiValueHeaders"].values())
    for ev in (v2, v1):
        if ev["isBase64Encoded"]:
            assert base64.b64decode(ev["body"]) == body
        elif body:
            assert ev["body"].encode() == body
