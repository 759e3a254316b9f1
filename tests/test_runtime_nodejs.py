"""The Node.js runtime (runner/runtimes/nodejs/bootstrap.js) as a plain process, outside a sandbox."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from easyfaas import frames
from tests.runtime_harness import REPO, RuntimeProcess, runtime_env

NODE = shutil.which("node") or "/usr/bin/node"
BOOTSTRAP = str(REPO / "runner" / "runtimes" / "nodejs" / "bootstrap.js")

pytestmark = pytest.mark.skipif(not os.path.exists(NODE), reason="node is not installed")


@pytest.fixture
def start_node() -> Iterator[Any]:
    roots: list[Path] = []
    started: list[RuntimeProcess] = []

    def start(code: str, handler: str = "index.handler", filename: str = "index.js") -> RuntimeProcess:
        root = Path(tempfile.mkdtemp(prefix="ef-node-"))
        roots.append(root)
        target = root / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(code))
        rt = RuntimeProcess([os.path.realpath(NODE), BOOTSTRAP], runtime_env(root, handler))
        started.append(rt)
        return rt

    yield start
    for rt in started:
        rt.close()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def test_callback_hello_world(start_node: Any) -> None:
    rt = start_node('exports.handler = (event, context, callback) => callback(null, "Hello world!");\n')
    assert rt.read_status() == {"ok": True}
    assert rt.status_closed()
    response = rt.invoke(id="n1")
    assert response.pop("memory_peak_kb") > 0  # the process's peak memory (tests/test_frames_contract.py)
    assert response == {"id": "n1", "ok": True, "result": "Hello world!",
                        "content_type": "text/plain; charset=utf-8", "logs": ""}


def test_async_handler_returning_an_object(start_node: Any) -> None:
    rt = start_node("""
        exports.handler = async (event) => {
          await new Promise((r) => setTimeout(r, 5));
          return { got: event, list: [1, 2] };
        };
    """)
    rt.read_status()
    response = rt.invoke({"x": 1})
    assert response["content_type"] == "application/json"
    assert json.loads(response["result"]) == {"got": {"x": 1}, "list": [1, 2]}


def test_sync_handler_returning_undefined_is_null(start_node: Any) -> None:
    rt = start_node("exports.handler = (event, context) => { context.functionName; };\n")
    rt.read_status()
    response = rt.invoke()
    assert response["ok"] is True and response["result"] == "null"


def test_promise_rejection_is_an_error(start_node: Any) -> None:
    rt = start_node("""
        class QuotaError extends Error { constructor(m) { super(m); this.name = 'QuotaError'; } }
        exports.handler = async () => { throw new QuotaError('over quota'); };
    """)
    rt.read_status()
    response = rt.invoke()
    assert response["ok"] is False and response["fatal"] is False
    assert response["error"]["errorType"] == "QuotaError"
    assert response["error"]["errorMessage"] == "over quota"
    assert any("index.js" in line for line in response["error"]["stackTrace"])
    assert not any("bootstrap.js" in line or "node:internal" in line for line in response["error"]["stackTrace"])


def test_callback_error_and_thrown_error(start_node: Any) -> None:
    rt = start_node("""
        exports.handler = (event, context, callback) => {
          if (event.mode === 'callback') return callback(new TypeError('bad input'));
          if (event.mode === 'string') return callback('plain failure');
          throw new RangeError('thrown');
        };
    """)
    rt.read_status()
    assert rt.invoke({"mode": "callback"})["error"]["errorType"] == "TypeError"
    assert rt.invoke({"mode": "string"})["error"]["errorMessage"] == "plain failure"
    thrown = rt.invoke({"mode": "throw"})["error"]
    assert (thrown["errorType"], thrown["errorMessage"]) == ("RangeError", "thrown")


def test_context_fields(start_node: Any) -> None:
    rt = start_node("""
        exports.handler = (event, context, callback) => callback(null, {
          awsRequestId: context.awsRequestId, requestId: context.requestId,
          functionName: context.functionName, functionVersion: context.functionVersion,
          arn: context.invokedFunctionArn, memory: context.memoryLimitInMB,
          remaining: context.getRemainingTimeInMillis(), waits: context.callbackWaitsForEmptyEventLoop,
          cwd: process.cwd(),
        });
    """)
    rt.read_status()
    out = json.loads(rt.invoke(id="int-9", request_id="ext-9",
                               deadline_ms=int(time.time() * 1000) + 4000)["result"])
    assert out["awsRequestId"] == "ext-9" and out["requestId"] == "ext-9"  # Lambda: the request id
    assert out["functionName"] == "fn-test" and out["functionVersion"] == "7"
    assert out["arn"] == "brn:bce:cfc:bj:0123:function:fn-test:7"
    assert out["memory"] == "256"
    assert 2500 < out["remaining"] <= 4000
    assert out["waits"] is True
    assert out["cwd"].startswith("/tmp/ef-node-")


def test_context_succeed(start_node: Any) -> None:
    rt = start_node("exports.handler = (event, context) => { setTimeout(() => context.succeed('late'), 1); };\n")
    rt.read_status()
    # A (event, context) handler returning undefined answers on the next turn: succeed is too late.
    assert rt.invoke()["result"] == "null"
    rt2 = start_node("exports.handler = (event, context) => { context.succeed({ s: 1 }); };\n")
    rt2.read_status()
    assert json.loads(rt2.invoke()["result"]) == {"s": 1}


def test_console_capture_does_not_mix_concurrent_requests(start_node: Any) -> None:
    rt = start_node("""
        exports.handler = async (event) => {
          for (let i = 0; i < 5; i++) {
            console.log(event.tag, i);
            console.error('err-' + event.tag);
            await new Promise((r) => setTimeout(r, 10));
          }
          return event.tag;
        };
    """)
    rt.read_status()
    results: dict[str, dict[str, Any]] = {}

    def call(tag: str) -> None:
        results[tag] = rt.invoke({"tag": tag}, id=tag)

    threads = [threading.Thread(target=call, args=(tag,)) for tag in ("alpha", "bravo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for tag, other in (("alpha", "bravo"), ("bravo", "alpha")):
        assert results[tag]["result"] == tag
        logs = results[tag]["logs"]
        assert logs.count(f"{tag} ") == 5 and logs.count(f"err-{tag}") == 5
        assert other not in logs


def test_missing_module_is_fatal(start_node: Any) -> None:
    rt = start_node("exports.other = () => 1;\n", handler="nowhere.handler")
    status = rt.read_status()
    assert status["ok"] is False
    assert status["error"]["errorType"] == "Runtime.ImportModuleError"
    assert "nowhere" in status["error"]["errorMessage"]
    response = rt.invoke()
    assert response["fatal"] is True and response["error"] == status["error"]


def test_module_that_throws_on_load(start_node: Any) -> None:
    rt = start_node("require('a-package-that-is-not-there');\nexports.handler = () => 1;\n")
    status = rt.read_status()
    assert status["error"]["errorType"] == "Runtime.ImportModuleError"
    assert "a-package-that-is-not-there" in status["error"]["errorMessage"]


def test_missing_export(start_node: Any) -> None:
    rt = start_node("exports.other = () => 1;\n")
    status = rt.read_status()
    assert status["error"]["errorType"] == "Runtime.HandlerNotFound"
    assert rt.invoke()["fatal"] is True


def test_syntax_error(start_node: Any) -> None:
    rt = start_node("exports.handler = (event => {;\n")
    status = rt.read_status()
    assert status["error"]["errorType"] == "Runtime.UserCodeSyntaxError"


def test_sub_path_handler(start_node: Any) -> None:
    rt = start_node("exports.main = async () => 'deep';\n", handler="src/app.main", filename="src/app.js")
    assert rt.read_status() == {"ok": True}
    assert rt.invoke()["result"] == "deep"


def test_es_module_handler(start_node: Any) -> None:
    rt = start_node("export const handler = async (event) => ({ esm: true, n: event.n });\n", filename="index.mjs")
    assert rt.read_status() == {"ok": True}
    assert json.loads(rt.invoke({"n": 3})["result"]) == {"esm": True, "n": 3}


def test_large_event_of_5_mb(start_node: Any) -> None:
    rt = start_node("exports.handler = async (event) => ({ len: event.blob.length });\n")
    rt.read_status()
    blob = "q" * (5 * 1024 * 1024)
    assert json.loads(rt.invoke({"blob": blob})["result"]) == {"len": len(blob)}


def test_partial_and_batched_frames_on_one_connection(start_node: Any) -> None:
    rt = start_node("exports.handler = async (event) => event.n * 2;\n")
    rt.read_status()
    deadline = int(time.time() * 1000) + 10_000
    batch = b"".join(frames.encode({"id": f"b{n}", "event": json.dumps({"n": n}), "deadline_ms": deadline})
                     for n in range(3))
    with rt.connect() as conn:
        conn.sendall(batch)  # three frames in one write
        answers = [frames.recv_frame(conn) for _ in range(3)]
        assert [(a["id"], a["result"]) for a in answers] == [("b0", "0"), ("b1", "2"), ("b2", "4")]
        one = frames.encode({"id": "slow", "event": json.dumps({"n": 21}), "deadline_ms": deadline})
        for i in range(len(one)):  # byte by byte, header included
            conn.send(one[i:i + 1])
        assert frames.recv_frame(conn)["result"] == "42"


def test_uncaught_exception_answers_in_flight_request_and_exits(start_node: Any) -> None:
    rt = start_node("""
        exports.handler = (event, context, callback) => {
          setTimeout(() => { throw new Error('escaped'); }, 5);
        };
    """)
    rt.read_status()
    response = rt.invoke(id="doomed")
    assert response["id"] == "doomed" and response["fatal"] is True
    assert response["error"]["errorMessage"] == "escaped"
    deadline = time.monotonic() + 5
    while rt.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not rt.alive()


def test_oversized_frame_closes_the_connection(start_node: Any) -> None:
    rt = start_node("exports.handler = async () => 1;\n")
    rt.read_status()
    with rt.connect() as conn:
        conn.sendall(struct.pack(">I", 17 * 1024 * 1024))
        assert conn.recv(10) == b""
    assert rt.invoke()["result"] == "1"  # the runtime itself is fine
