"""The gateway's HTTP/1.1 server on a real socket (httptrigger/server.py): keep-alive and pipelining
in order, body limits (announced and chunked) answered 413 without calling the handler, Expect:
100-continue, HEAD and 204 framing, malformed requests, and what the handler is given."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import pytest

from httptrigger.request import HttpRequest
from httptrigger.response import HttpAnswer
from httptrigger.server import HttpServer

LIMIT = 1000


class Echo:
    """A handler that answers what it was given (and counts its calls)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: HttpRequest) -> HttpAnswer:
        self.calls += 1
        if request.raw_path == "/slow":
            await asyncio.sleep(0.2)
        if request.raw_path == "/empty":
            return HttpAnswer(204, [("X-A", "1")], b"ignored")
        body = json.dumps({"method": request.method, "path": request.raw_path, "query": request.raw_query,
                           "headers": request.headers, "body": request.body.decode("latin-1"),
                           "ip": request.source_ip, "protocol": request.protocol,
                           "rid": request.request_id}).encode()
        return HttpAnswer(200, [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
                          body)


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, Echo]]:
    echo = Echo()
    srv = HttpServer(echo, max_body_size=LIMIT)
    await srv.start("127.0.0.1", 0)
    try:
        yield srv, echo
    finally:
        await srv.close(2)


async def exchange(port: int, data: bytes, *, until_close: bool = True, expect: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), 10)
        out = b""
        while out.count(b"HTTP/1.1 ") < expect:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        writer.close()


def split_answers(raw: bytes) -> list[tuple[str, dict[str, list[str]], bytes]]:
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers.setdefault(name.lower(), []).append(value)
        length = int(headers.get("content-length", ["0"])[0])
        answers.append((lines[0], headers, rest[:length]))
        raw = rest[length:]
    return answers


async def test_keep_alive_pipelining_in_order(server: tuple[HttpServer, Echo]) -> None:
    srv, _ = server
    raw = await exchange(srv.port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"POST /b?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-M: 1\r\n"
                                   b"x-m: 2\r\n\r\nabc"
                                   b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    answers = split_answers(raw)
    assert [a[0] for a in answers] == ["HTTP/1.1 200 OK"] * 3
    bodies = [json.loads(a[2]) for a in answers]
    assert [b["path"] for b in bodies] == ["/slow", "/b", "/c"]
    assert bodies[1]["query"] == "x=1" and bodies[1]["body"] == "abc" and bodies[1]["method"] == "POST"
    assert ["X-M", "1"] in bodies[1]["headers"] and ["x-m", "2"] in bodies[1]["headers"]
    assert bodies[1]["ip"] == "127.0.0.1" and bodies[1]["protocol"] == "HTTP/1.1" and bodies[1]["rid"]
    assert answers[1][1]["set-cookie"] == ["a=1", "b=2"]
    assert answers[2][1]["connection"] == ["close"]


async def test_request_id_is_kept_and_absolute_urls_are_paths(server: tuple[HttpServer, Echo]) -> None:
    srv, _ = server
    raw = await exchange(srv.port, b"GET http://example.com/abs/p?q=1 HTTP/1.1\r\nHost: a\r\n"
                                   b"X-easyfaas-Request-Id: my-id-1\r\nConnection: close\r\n\r\n")
    (status, headers, body), = split_answers(raw)
    assert json.loads(body)["path"] == "/abs/p" and json.loads(body)["query"] == "q=1"
    assert json.loads(body)["rid"] == "my-id-1" and headers["apigw-requestid"] == ["my-id-1"]


async def test_announced_body_over_the_limit_is_413_without_the_handler(server: tuple[HttpServer, Echo]) -> None:
    srv, echo = server
    raw = await exchange(srv.port, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1)
                         + b"x" * 100)
    (status, headers, body), = split_answers(raw)
    assert status.startswith("HTTP/1.1 413") and json.loads(body) == {"message": "Request Entity Too Large"}
    assert headers["connection"] == ["close"] and echo.calls == 0


async def test_chunked_body_over_the_limit_is_413(server: tuple[HttpServer, Echo]) -> None:
    srv, echo = server
    chunk = b"x" * 600
    raw = await exchange(srv.port, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 413 ") and echo.calls == 0
    raw = await exchange(srv.port, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close"
                                   b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert json.loads(split_answers(raw)[0][2])["body"] == "abcde"


async def test_expect_continue(server: tuple[HttpServer, Echo]) -> None:
    srv, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
                 b"Connection: close\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hi")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert json.loads(split_answers(raw)[0][2])["body"] == "hi"


async def test_head_and_204_framing(server: tuple[HttpServer, Echo]) -> None:
    srv, _ = server
    raw = await exchange(srv.port, b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /empty HTTP/1.1\r\nHost: a\r\n"
                                   b"Connection: close\r\n\r\n")
    head_part, _, rest = raw.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: " in head_part
    assert rest.startswith(b"HTTP/1.1 204 No Content")  # no body after the HEAD answer
    assert b"Content-Length" not in rest and rest.endswith(b"\r\n\r\n")  # and none with the 204


async def test_malformed_requests_are_400(server: tuple[HttpServer, Echo]) -> None:
    srv, echo = server
    raw = await exchange(srv.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ") and raw.endswith(b'{"message":"Bad Request"}') and echo.calls == 0
    raw = await exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_endless_headers_are_refused(server: tuple[HttpServer, Echo]) -> None:
    srv, echo = server
    pad = b"X-Pad: %s\r\n" % (b"y" * 1000)
    raw = await exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + pad * 80 + b"\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ") and echo.calls == 0
