"""The invoke frame bodies (easyfaas/frames.py): the model itself, and both language runtimes
agreeing with it.

The controller builds an ``InvokeRequest`` and reads an ``InvokeResponse`` strictly; here the real
Python runtime and the real Node.js bootstrap (started as in tests/test_runtime_python.py and
tests/test_runtime_nodejs.py: fd 3 the listener, fd 4 the status pipe) are sent exactly
``InvokeRequest.to_wire()`` and their replies must parse with ``InvokeResponse.from_wire()``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from easyfaas import frames
from easyfaas.frames import (CONTENT_TYPE_JSON, CONTENT_TYPE_TEXT, FrameError, FunctionError, FunctionErrorType,
                             InvokeRequest, InvokeResponse)
from tests.runtime_harness import NODE, NODE_BOOTSTRAP, RuntimeProcess, python_runtime_argv, runtime_env, started_runtime


# ---- the model ---------------------------------------------------------------------------------

texts = st.text(max_size=40)
requests = st.builds(InvokeRequest, id=st.text(min_size=1, max_size=20), event=texts,
                     deadline_ms=st.integers(min_value=0, max_value=2**53), log=st.booleans(),
                     request_id=st.text(min_size=1, max_size=20), function_arn=texts, trace_id=texts,
                     client_context=texts, identity=texts)


@given(request=requests)
def test_request_round_trips_through_json(request: InvokeRequest) -> None:
    wire = request.to_wire()
    assert InvokeRequest.from_wire(json.loads(frames.encode(wire)[frames.HEADER.size:])) == request
    # Empty optional fields stay off the wire; the fixed ones are always there.
    assert {"id", "event", "deadline_ms", "log", "request_id"} <= set(wire)
    assert all(wire[key] for key in ("function_arn", "trace_id", "client_context", "identity") if key in wire)


def test_request_wire_form_is_the_documented_one() -> None:
    assert InvokeRequest("f-1", '{"a": 1}', 1700000000000, True, "ext-1").to_wire() == {
        "id": "f-1", "event": '{"a": 1}', "deadline_ms": 1700000000000, "log": True, "request_id": "ext-1"}


@pytest.mark.parametrize("body, expected", [
    ({}, InvokeRequest("", "{}", 0, False, "")),
    ({"id": "x"}, InvokeRequest("x", "{}", 0, False, "x")),  # request_id defaults to the frame id
    ({"id": 7, "event": {"not": "text"}, "deadline_ms": "soon", "log": 1, "request_id": None},
     InvokeRequest("7", "{}", 0, False, "7")),
    ({"id": "x", "deadline_ms": True}, InvokeRequest("x", "{}", 0, False, "x")),  # a bool is no time
    ({"id": "x", "trace_id": "t", "unknown": "ignored"}, InvokeRequest("x", "{}", 0, False, "x", trace_id="t")),
])
def test_request_read_is_tolerant(body: dict[str, Any], expected: InvokeRequest) -> None:
    assert InvokeRequest.from_wire(body) == expected


memory = st.integers(min_value=0, max_value=2**40)
responses = st.one_of(
    st.builds(InvokeResponse, id=texts, ok=st.just(True), result=texts,
              content_type=st.sampled_from([CONTENT_TYPE_TEXT, CONTENT_TYPE_JSON]),
              logs=st.none() | texts, memory_peak_kb=memory),
    st.builds(InvokeResponse, id=texts, ok=st.just(False),
              error=st.fixed_dictionaries({"errorMessage": texts, "errorType": texts,
                                           "stackTrace": st.lists(texts, max_size=3)}),
              fatal=st.booleans(), logs=st.none() | texts, memory_peak_kb=memory),
)


@given(response=responses)
def test_response_round_trips_through_json(response: InvokeResponse) -> None:
    wire = json.loads(frames.encode(response.to_wire())[frames.HEADER.size:])
    assert InvokeResponse.from_wire(wire) == response
    assert ("logs" in wire) == (response.logs is not None)
    # An unknown peak (0) stays off the wire.
    assert ("memory_peak_kb" in wire) == (response.memory_peak_kb != 0)


def test_response_defaults() -> None:
    # A result without a content type is text, as a string result is.
    assert InvokeResponse.from_wire({"id": "a", "ok": True, "result": "r"}).content_type == CONTENT_TYPE_TEXT
    assert InvokeResponse("a", True, "r").to_wire()["content_type"] == CONTENT_TYPE_TEXT
    failed = InvokeResponse.from_wire({"id": "a", "ok": False, "error": {}})
    assert (failed.ok, failed.fatal, failed.error, failed.logs) == (False, False, {}, None)
    assert failed.memory_peak_kb == 0  # a runtime that does not report its memory


@pytest.mark.parametrize("body, reason", [
    ({"id": "a"}, "boolean 'ok'"),
    ({"id": "a", "ok": 1, "result": ""}, "boolean 'ok'"),
    ({"id": "a", "ok": False}, "'error' object"),
    ({"id": "a", "ok": False, "error": "text"}, "'error' object"),
    ({"id": "a", "ok": True, "result": 42}, "non-text 'result'"),
    ({"id": "a", "ok": True, "result": "", "logs": ["x"]}, "non-text 'result' or 'logs'"),
    ({"id": "a", "ok": True, "result": "", "content_type": 5}, "content_type"),
    ({"id": "a", "ok": True, "result": "", "memory_peak_kb": "40M"}, "memory_peak_kb"),
    ({"id": "a", "ok": True, "result": "", "memory_peak_kb": -1}, "memory_peak_kb"),
    ({"id": "a", "ok": True, "result": "", "memory_peak_kb": 1.5}, "memory_peak_kb"),
    ({"id": "a", "ok": True, "result": "", "memory_peak_kb": True}, "memory_peak_kb"),
])
def test_response_read_is_strict(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        InvokeResponse.from_wire(body)


def test_function_error_wire_form() -> None:
    timeout = FunctionError("r-1 Task timed out after 3.00 seconds", FunctionErrorType.TIMEOUT)
    assert timeout.to_wire() == {"errorMessage": "r-1 Task timed out after 3.00 seconds",
                                 "errorType": "Sandbox.Timedout"}
    full = FunctionError("boom", "ValueError", ["at f"])
    assert FunctionError.from_wire(full.to_wire()) == full
    assert list(full.to_wire()) == ["errorMessage", "errorType", "stackTrace"]
    assert FunctionError.from_wire("just text") == FunctionError("just text", FunctionErrorType.RUNTIME_ERROR)
    assert FunctionError.from_wire({"errorMessage": 3}).type == FunctionErrorType.RUNTIME_ERROR


# ---- the stream split (both ends' incremental readers) -----------------------------------------

def taker(taken: list[bytes], keep_going: bool = True) -> Any:
    """A ``split_frames`` callback that appends each body to ``taken``."""
    def take(body: bytes) -> bool:
        taken.append(body)
        return keep_going
    return take


@given(bodies=st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=30), max_size=3), max_size=6),
       cut=st.integers(min_value=0, max_value=400))
def test_split_frames_takes_each_whole_frame_once_in_order_whatever_the_reads(bodies: list[dict[str, str]],
                                                                               cut: int) -> None:
    stream = b"".join(frames.encode(body) for body in bodies)
    cut = min(cut, len(stream))
    taken: list[bytes] = []
    buf = bytearray()
    for piece in (stream[:cut], stream[cut:]):  # any split into two reads
        buf += piece
        frames.split_frames(buf, taker(taken))
    assert [frames.decode_body(body) for body in taken] == bodies
    assert buf == bytearray()


def test_split_frames_keeps_a_partial_frame_and_stops_when_told() -> None:
    one, two, three = (frames.encode({"n": n}) for n in (1, 2, 3))
    buf = bytearray(one + two + three[:5])
    taken: list[bytes] = []
    frames.split_frames(buf, taker(taken, keep_going=False))  # stops after the first
    assert [frames.decode_body(b) for b in taken] == [{"n": 1}]
    assert bytes(buf) == two + three[:5]
    frames.split_frames(buf, taker(taken))
    assert [frames.decode_body(b) for b in taken] == [{"n": 1}, {"n": 2}]
    assert bytes(buf) == three[:5]  # the partial frame waits for the next read


def test_split_frames_refuses_a_length_over_the_limit_after_the_frames_before_it() -> None:
    buf = bytearray(frames.encode({"n": 1}) + frames.HEADER.pack(frames.MAX_FRAME + 1) + b"x")
    taken: list[bytes] = []
    with pytest.raises(FrameError, match="exceeds"):
        frames.split_frames(buf, taker(taken))
    assert taken == [b'{"n":1}']
    empty = bytearray(frames.HEADER.pack(0))
    frames.split_frames(empty, taker(taken))
    assert taken[-1] == b"" and not empty  # an empty body is a frame (decode_body refuses it)


# ---- the runtimes agree with the model ---------------------------------------------------------

PY_HANDLER = """
    def handler(event, context):
        print("log line")
        if event.get("alloc_mb"):
            hog = bytearray(event["alloc_mb"] << 20)
            hog[::4096] = b"x" * len(hog[::4096])  # touched, so resident
        if event.get("mode") == "string":
            return "plain text \u00fc"
        if event.get("mode") == "fail":
            raise ValueError("it failed")
        return {"echo": event, "request_id": context.request_id, "aws_request_id": context.aws_request_id,
                "remaining": context.get_remaining_time_in_millis()}
"""

NODE_HANDLER = """
    exports.handler = async (event, context) => {
      console.log("log line");
      if (event.alloc_mb) { const hog = Buffer.alloc(event.alloc_mb << 20, 1); globalThis.hog = hog; }
      if (event.mode === "string") return "plain text \u00fc";
      if (event.mode === "fail") { const e = new Error("it failed"); e.name = "ValueError"; throw e; }
      return { echo: event, request_id: context.requestId, aws_request_id: context.awsRequestId,
               remaining: context.getRemainingTimeInMillis() };
    };
"""


@pytest.fixture(params=["python", "nodejs"])
def runtime(request: pytest.FixtureRequest) -> Iterator[RuntimeProcess]:
    with started_runtime(request.param, PY_HANDLER, NODE_HANDLER, "ef-fc-") as rt:
        yield rt


def _invoke(rt: RuntimeProcess, request: InvokeRequest) -> InvokeResponse:
    sock = rt.connect()
    try:
        frames.send_frame(sock, request.to_wire())
        body = frames.recv_frame(sock)
    finally:
        sock.close()
    assert body is not None, f"the runtime closed the connection; output: {rt.output()}"
    return InvokeResponse.from_wire(body)


def _request(event: dict[str, Any], n: int, log: bool = True) -> InvokeRequest:
    return InvokeRequest(f"frame-{n}", json.dumps(event), int(time.time() * 1000) + 8000, log, f"ext-{n}")


def test_object_result(runtime: RuntimeProcess) -> None:
    response = _invoke(runtime, _request({"x": [1, 2]}, 1))
    assert (response.id, response.ok, response.content_type) == ("frame-1", True, CONTENT_TYPE_JSON)
    out = json.loads(response.result)
    # The runtime read the request's fields where the model puts them.
    assert out["echo"] == {"x": [1, 2]}
    # Lambda's aws_request_id / awsRequestId is the invocation's request id, not the frame's id.
    assert (out["request_id"], out["aws_request_id"]) == ("ext-1", "ext-1")
    assert 0 < out["remaining"] <= 8000
    assert response.logs is not None and "log line" in response.logs


def test_function_error(runtime: RuntimeProcess) -> None:
    response = _invoke(runtime, _request({"mode": "fail"}, 2))
    assert (response.id, response.ok, response.fatal) == ("frame-2", False, False)
    assert response.error is not None
    error = FunctionError.from_wire(response.error)
    assert (error.type, error.message) == ("ValueError", "it failed")
    assert isinstance(error.stack_trace, list)


def test_memory_peak_is_the_runtime_process_high_water_mark(runtime: RuntimeProcess) -> None:
    small = _invoke(runtime, _request({}, 6))
    assert small.ok and 1024 <= small.memory_peak_kb < 200 << 10  # a runtime's own few MiB
    big = _invoke(runtime, _request({"alloc_mb": 40}, 7))
    assert big.ok, big.error
    assert big.memory_peak_kb >= small.memory_peak_kb + (40 << 10) - 1024
    # A high-water mark: it stays after the memory is given back.
    assert _invoke(runtime, _request({}, 8)).memory_peak_kb >= big.memory_peak_kb
    failed = _invoke(runtime, _request({"mode": "fail"}, 9))
    assert not failed.ok and failed.memory_peak_kb >= big.memory_peak_kb


def test_string_result_and_no_logs_unless_asked(runtime: RuntimeProcess) -> None:
    response = _invoke(runtime, _request({"mode": "string"}, 3, log=False))
    assert (response.id, response.ok) == ("frame-3", True)
    assert (response.result, response.content_type) == ("plain text \u00fc", CONTENT_TYPE_TEXT)
    assert not response.logs  # not asked for: absent (or empty)


@pytest.mark.parametrize("kind", ["python", "nodejs"])
def test_init_failure_is_a_fatal_response_with_a_known_error_type(kind: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="ef-fc-"))
    if kind == "python":
        (root / "index.py").write_text("def handler(event, context):\n    return 1\n")
        argv = python_runtime_argv()
    else:
        if not os.path.exists(NODE):
            shutil.rmtree(root)
            pytest.skip("node is not installed")
        (root / "index.js").write_text("exports.handler = async () => 1;\n")
        argv = [os.path.realpath(NODE), NODE_BOOTSTRAP]
    rt = RuntimeProcess(argv, runtime_env(root, "index.missing"))
    try:
        status = rt.read_status()
        assert status["ok"] is False
        assert FunctionError.from_wire(status["error"]).type == FunctionErrorType.HANDLER_NOT_FOUND
        response = _invoke(rt, _request({}, 5))
        assert (response.id, response.ok, response.fatal) == ("frame-5", False, True)
        assert response.error is not None
        assert FunctionError.from_wire(response.error).type == FunctionErrorType.HANDLER_NOT_FOUND
    finally:
        rt.close()
        shutil.rmtree(root, ignore_errors=True)
