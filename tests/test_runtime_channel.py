"""controller.runtime_channel against a real unix-socket server that speaks the runtime's frames
(:class:`tests.fakes.frame_runtime.FrameRuntime`, a language runtime's stand-in).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from typing import Any, AsyncIterator, Iterator

import pytest

from controller.runtime_channel import ChannelClosed, ChannelTimeout, ChannelUnavailable, RuntimeChannel
from easyfaas.frames import HEADER, MAX_FRAME, InvokeRequest, InvokeResponse, encode, read_frame
from tests.fakes.frame_runtime import FrameRuntime


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Short paths: unix socket names are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="ef-rc-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def runtime(sock_dir: str) -> AsyncIterator[FrameRuntime]:
    rt = await FrameRuntime(os.path.join(sock_dir, "invoke.sock")).start()
    try:
        yield rt
    finally:
        await rt.stop()


def _frame(event: Any, n: int = 0, log: bool = False) -> InvokeRequest:
    return InvokeRequest(f"req-{n}", json.dumps(event), 0, log, f"ext-{n}")


async def test_request_response_reuses_one_connection(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 2)
    try:
        for n in range(5):
            reply = await channel.call(_frame({"n": n}, n), timeout=2)
            assert reply.id == f"req-{n}"
            assert reply.ok is True
            assert json.loads(reply.result) == {"n": n}
        assert runtime.accepted == 1
        assert channel.open_connections == 1
        assert channel.idle_connections == 1
        assert [r["request_id"] for r in runtime.requests] == [f"ext-{n}" for n in range(5)]
    finally:
        channel.close()


async def test_logs_and_errors_are_passed_through(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    try:
        reply = await channel.call(_frame({"fail": "boom", "log": "printed"}, log=True), timeout=2)
        assert reply.ok is False
        assert reply.error["errorMessage"] == "boom"
        assert reply.logs == "printed"
    finally:
        channel.close()


async def test_concurrent_calls_open_up_to_max_connections(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 3)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await asyncio.gather(*(channel.call(_frame({"sleep": 0.2, "n": n}, n), timeout=5)
                                         for n in range(7)))
        elapsed = loop.time() - started
        assert sorted(json.loads(r.result)["n"] for r in replies) == list(range(7))
        assert runtime.max_connections == 3
        assert runtime.accepted == 3
        assert channel.open_connections == 3
        # 7 requests over 3 connections of 0.2 s each take 3 rounds, not 1 and not 7.
        assert 0.55 < elapsed < 1.5
    finally:
        channel.close()


async def test_timeout_closes_that_connection_only(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 2)
    try:
        await channel.call(_frame({}), timeout=2)
        with pytest.raises(ChannelTimeout):
            await channel.call(_frame({"sleep": 1.0}, 1), timeout=0.1)
        assert channel.open_connections == 0
        # The late reply of the timed-out request must not be read as the next request's answer.
        reply = await channel.call(_frame({"n": 2}, 2), timeout=2)
        assert reply.id == "req-2"
        assert runtime.accepted == 2
    finally:
        channel.close()


async def test_eof_mid_request_is_an_error(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    try:
        with pytest.raises(ChannelClosed) as info:
            await channel.call(_frame({"crash": True}), timeout=2)
        assert not isinstance(info.value, ChannelUnavailable)
        assert channel.open_connections == 0
        with pytest.raises(ChannelClosed):
            await channel.call(_frame({"half": True}), timeout=2)
    finally:
        channel.close()


async def test_garbage_frame_is_an_error(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    try:
        with pytest.raises(ChannelClosed, match="not JSON"):
            await channel.call(_frame({"garbage": True}), timeout=2)
        assert channel.open_connections == 0
        assert (await channel.call(_frame({"ok": 1}, 3), timeout=2)).id == "req-3"
    finally:
        channel.close()


async def test_reply_with_wrong_id_is_an_error(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "wrong.sock")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader)
        assert frame is not None
        writer.write(encode({"id": "someone-else", "ok": True, "result": ""}))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=path)
    channel = RuntimeChannel(path, 1)
    try:
        with pytest.raises(ChannelClosed, match="someone-else"):
            await channel.call(_frame({}), timeout=2)
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("reply, reason", [
    ({"id": "req-0", "ok": "yes", "result": ""}, "boolean 'ok'"),
    ({"id": "req-0", "ok": True, "result": {"not": "text"}}, "non-text 'result'"),
    ({"id": "req-0", "ok": False, "error": "a string"}, "'error' object"),
    ({"id": "req-0", "ok": True, "result": "", "content_type": 7}, "content_type"),
])
async def test_reply_that_is_not_a_response_frame_is_an_error(sock_dir: str, reply: dict[str, Any],
                                                              reason: str) -> None:
    path = os.path.join(sock_dir, "bad.sock")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_frame(reader) is not None:
            writer.write(encode(reply))
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=path)
    channel = RuntimeChannel(path, 1)
    try:
        with pytest.raises(ChannelClosed, match=reason):
            await channel.call(_frame({}), timeout=2)
        assert channel.open_connections == 0  # a connection out of step is never reused
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("unasked", [False, True])
async def test_a_reply_in_pieces_is_whole_and_a_frame_nobody_asked_for_ends_its_connection(
        sock_dir: str, unasked: bool) -> None:
    path = os.path.join(sock_dir, "pieces.sock")
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while (frame := await read_frame(reader)) is not None:
            reply = encode({"id": frame["id"], "ok": True, "result": "hello"})
            if unasked:  # one write: the reply and a frame after it arrive in one read
                writer.write(reply + encode({"id": frame["id"], "ok": True, "result": "again"}))
            else:
                for at in range(0, len(reply), 5):
                    writer.write(reply[at:at + 5])
                    await writer.drain()
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=path)
    channel = RuntimeChannel(path, 1)
    try:
        for n in range(2):
            assert (await channel.call(_frame({}, n), timeout=2)).result == "hello"
        # In pieces the connection is kept; out of step it is closed and the next call opens another.
        assert connections == (2 if unasked else 1)
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def test_a_reply_longer_than_the_limit_is_an_error(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "long.sock")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_frame(reader) is not None:
            writer.write(HEADER.pack(MAX_FRAME + 1) + b"{")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=path)
    channel = RuntimeChannel(path, 1)
    try:
        with pytest.raises(ChannelClosed, match="exceeds"):
            await channel.call(_frame({}), timeout=2)
        assert channel.open_connections == 0
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def test_reply_is_the_typed_response(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    try:
        reply = await channel.call(_frame({"return": "plain"}, 4, log=True), timeout=2)
        assert reply == InvokeResponse("req-4", True, "plain", "text/plain; charset=utf-8", logs="")
        # What the runtime read is the request's wire form, field for field.
        assert runtime.requests[-1] == _frame({"return": "plain"}, 4, log=True).to_wire()
        assert InvokeRequest.from_wire(runtime.requests[-1]) == _frame({"return": "plain"}, 4, log=True)
    finally:
        channel.close()


async def test_missing_socket_is_unavailable(sock_dir: str) -> None:
    channel = RuntimeChannel(os.path.join(sock_dir, "absent.sock"), 1)
    with pytest.raises(ChannelUnavailable):
        await channel.call(_frame({}), timeout=1)
    # The failed connect gave its place back: a waiter would not hang.
    assert channel._open == 0


async def test_runtime_restart_discards_stale_idle_connection(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    try:
        await channel.call(_frame({}), timeout=2)
        await runtime.stop()
        await asyncio.sleep(0.05)
        await runtime.start()
        reply = await channel.call(_frame({"n": 1}, 1), timeout=2)
        assert reply.id == "req-1"
    finally:
        channel.close()


async def test_cancelled_call_frees_its_connection_for_waiters(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    try:
        slow = asyncio.create_task(channel.call(_frame({"sleep": 5}), timeout=10))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(channel.call(_frame({"n": 2}, 2), timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        reply = await asyncio.wait_for(waiting, 2)
        assert reply.id == "req-2"
        assert channel.open_connections == 1
    finally:
        channel.close()


async def test_close_fails_calls_in_flight(runtime: FrameRuntime) -> None:
    channel = RuntimeChannel(runtime.path, 1)
    call = asyncio.create_task(channel.call(_frame({"sleep": 5}), timeout=10))
    await asyncio.sleep(0.1)
    channel.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(call, 2)
    with pytest.raises(ChannelUnavailable):
        await channel.call(_frame({}), timeout=1)
