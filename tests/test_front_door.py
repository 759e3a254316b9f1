"""The controller's front door: invocations parsed with httptools, the rest handed to aiohttp.

Real parts as in tests/test_controller_api.py (the controller app, a registry over HTTP, frame runtimes on
unix sockets; the funclet in memory), with the front door listening on a real TCP port and raw
HTTP/1.1 written to it, so framing, keep-alive, pipelining and hand-over are what is tested.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest

from controller.app import INVOKER
from controller.front_door import FrontDoor
from easyfaas.pod_names import free_port
from tests.fakes.controller_app import Env, make_env
from tests.fakes.stubs_registry import OWNER

HOST = "127.0.0.1"


class Door:
    def __init__(self, env: Env, door: FrontDoor, port: int) -> None:
        self.env = env
        self.door = door
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port)


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    env, cleanup = await make_env()
    runner = env.client.server.runner
    assert runner is not None and runner.server is not None
    front = FrontDoor(env.client.server.app[INVOKER], runner.server, keepalive_timeout=2)
    port = free_port()
    await front.start(HOST, port)
    try:
        yield Door(env, front, port)
    finally:
        front.stop_accepting()
        await front.wait_idle(2)
        await cleanup()


def invoke_request(name: str = "hello", event: Any = None, *, extra: str = "", body: bytes | None = None,
                   version: str = "1.1") -> bytes:
    data = body if body is not None else json.dumps({} if event is None else event).encode()
    return (f"POST /v1/functions/{name}/invocations HTTP/{version}\r\nHost: x\r\n"
            f"X-easyfaas-Account-Id: {OWNER}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return status, headers, body


async def test_invocation_is_answered_by_the_front_door(door: Door) -> None:
    reader, writer = await door.connect()
    writer.write(invoke_request(event={"k": "v"}, extra="X-easyfaas-Request-Id: my-req-7\r\n"))
    status, headers, body = await read_response(reader)
    assert status == 200 and json.loads(body) == {"k": "v"}
    assert headers["x-easyfaas-request-id"] == "my-req-7"
    assert headers["content-type"] == "application/json" and headers["date"].endswith("GMT")
    assert float(headers["x-easyfaas-function-exectime"]) >= 0
    # Keep-alive: the same connection serves the next one, still without aiohttp.
    writer.write(invoke_request(event={"n": 2}, extra="X-easyfaas-Request-Id: bad id!\r\n"))
    status, headers, body = await read_response(reader)
    assert status == 200 and json.loads(body) == {"n": 2}
    assert headers["x-easyfaas-request-id"] != "bad id!" and len(headers["x-easyfaas-request-id"]) == 36
    assert door.door.handed_over == 0 and len(door.door.connections) == 1
    writer.close()


async def test_other_routes_are_handed_to_aiohttp(door: Door) -> None:
    reader, writer = await door.connect()
    writer.write(b"GET /v1/resource HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200 and "Capacity" in json.loads(body)
    assert door.door.handed_over == 1
    # aiohttp owns the connection now, invocations on it included.
    writer.write(invoke_request(event={"via": "aiohttp"}))
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body) == {"via": "aiohttp"}
    writer.close()


async def test_a_request_of_another_route_after_invocations_moves_the_connection(door: Door) -> None:
    reader, writer = await door.connect()
    writer.write(invoke_request(event={"i": 1}))
    assert (await read_response(reader))[0] == 200
    writer.write(b"POST /v1/runtimes/nope/invalidate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\n{}\r\n0\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 404 and json.loads(body)["Code"] == "ResourceNotFoundException"
    assert door.door.handed_over == 1
    writer.write(invoke_request(event={"i": 2}))
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body) == {"i": 2}
    writer.close()


async def test_first_line_in_pieces_chunked_body_and_100_continue(door: Door) -> None:
    reader, writer = await door.connect()
    raw = (f"POST /v1/functions/hello/invocations HTTP/1.1\r\nHost: x\r\nX-easyfaas-Account-Id: {OWNER}\r\n"
           "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    for piece in (raw[:3], raw[3:17], raw[17:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body) == {"a": 1}
    assert door.door.handed_over == 0
    writer.close()


async def test_pipelined_requests_are_answered_in_order(door: Door) -> None:
    reader, writer = await door.connect()
    writer.write(invoke_request(event={"sleep": 0.1, "i": 1}) + invoke_request(event={"i": 2})
                 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first, second = await read_response(reader), await read_response(reader)
    assert json.loads(first[2])["i"] == 1 and json.loads(second[2]) == {"i": 2}
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"hello controller")
    writer.close()

    # Requests behind one of another route cannot be carried over: a clear 400, then close.
    reader, writer = await door.connect()
    writer.write(invoke_request(event={"i": 3}))
    assert (await read_response(reader))[0] == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + invoke_request(event={"i": 4}))
    status, headers, body = await read_response(reader)
    assert status == 400 and json.loads(body)["Code"] == "InvalidRequestException"
    assert "pipelined" in json.loads(body)["Cause"] and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_oversized_and_malformed_requests(door: Door) -> None:
    max_body = door.door.invoker.max_body_size
    reader, writer = await door.connect()
    writer.write(f"POST /v1/functions/hello/invocations HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Length: {max_body + 1}\r\n\r\n{{".encode())
    status, headers, body = await read_response(reader)
    assert status == 413 and json.loads(body)["Code"] == "RequestTooLargeException"
    assert headers["connection"] == "close" and await asyncio.wait_for(reader.read(), 5) == b""

    reader, writer = await door.connect()
    writer.write(b"POST /v1/functions/hello/invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    try:
        for _ in range(max_body // len(chunk) + 2):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    except ConnectionError:
        pass  # refused and closed while we were still sending
    status, _, body = await read_response(reader)
    assert status == 413 and json.loads(body)["Code"] == "RequestTooLargeException"
    writer.close()

    reader, writer = await door.connect()
    writer.write(b"POST /v1/functions/hello/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 400 and json.loads(body)["Code"] == "InvalidRequestException"
    assert await asyncio.wait_for(reader.read(), 5) == b""

    reader, writer = await door.connect()
    writer.write(invoke_request(body=b"{not json"))
    status, _, body = await read_response(reader)
    assert status == 400 and json.loads(body)["Code"] == "InvalidRequestContentException"
    writer.write(invoke_request(name="bad%2Fname"))
    status, _, body = await read_response(reader)
    assert status == 400 and json.loads(body)["Code"] == "InvalidParameterValueException"
    writer.close()
    assert door.door.handed_over == 0


async def test_http_1_0_closes_and_idle_connections_time_out(door: Door) -> None:
    reader, writer = await door.connect()
    writer.write(invoke_request(event={"old": True}, version="1.0"))
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""

    reader, writer = await door.connect()
    writer.write(invoke_request())
    assert (await read_response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the 2 s keep-alive timeout


async def test_shutdown_lets_the_request_under_way_finish(door: Door) -> None:
    reader, writer = await door.connect()
    idle_reader, _idle_writer = await door.connect()
    writer.write(invoke_request(event={"sleep": 0.3, "slow": True}))
    await asyncio.sleep(0.1)
    door.door.stop_accepting()
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one closes at once
    waiting = asyncio.create_task(door.door.wait_idle(5))
    status, headers, body = await read_response(reader)
    assert status == 200 and json.loads(body)["slow"] is True and headers["connection"] == "close"
    await asyncio.wait_for(waiting, 5)
    with pytest.raises(OSError):
        await door.connect()


async def test_a_half_closed_client_still_gets_its_answers(door: Door) -> None:
    reader, writer = await door.connect()
    writer.write(invoke_request(event={"sleep": 0.05, "i": 1}) + invoke_request(event={"i": 2}))
    writer.write_eof()  # "nothing more from me": what was sent is still answered, then closed
    first, second = await read_response(reader), await read_response(reader)
    assert json.loads(first[2])["i"] == 1 and json.loads(second[2]) == {"i": 2}
    assert second[1]["connection"] == "close" and first[1].get("connection") != "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
