"""The Python runtime (runner/runtimes/python/bootstrap.py) as a plain process, outside a sandbox
(tests/runtime_harness.py: fd 3 a real listening unix socket, fd 4 a real pipe, as the runner
arranges them)."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.runtime_harness import RuntimeProcess, python_runtime_argv, runtime_env, task_root  # noqa: F401 - task_root: fixture


@pytest.fixture
def start_python(task_root: Path) -> Iterator[Any]:
    started: list[RuntimeProcess] = []

    def start(code: str, handler: str = "index.handler", filename: str = "index.py", **env: str) -> RuntimeProcess:
        target = task_root / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(code))
        rt = RuntimeProcess(python_runtime_argv(), runtime_env(task_root, handler, **env))
        started.append(rt)
        return rt

    yield start
    for rt in started:
        rt.close()


def test_string_result_is_verbatim_text(start_python: Any) -> None:
    rt = start_python("""
        def handler(event, context):
            return "Hello " + event["name"]
    """)
    assert rt.read_status() == {"ok": True}
    assert rt.status_closed()
    response = rt.invoke({"name": "world"}, id="abc")
    assert response.pop("memory_peak_kb") > 0  # the process's peak memory (tests/test_frames_contract.py)
    assert response == {"id": "abc", "ok": True, "result": "Hello world",
                        "content_type": "text/plain; charset=utf-8", "logs": ""}


def test_dict_result_is_json_and_connection_serves_several_requests(start_python: Any) -> None:
    rt = start_python("""
        def handler(event, context):
            return {"echo": event, "n": [1, 2]}
    """)
    assert rt.read_status()["ok"] is True
    with rt.connect() as conn:
        for i in range(3):
            response = rt.invoke({"i": i}, conn=conn, id=f"r{i}", log=False)
            assert response["id"] == f"r{i}"
            assert response["content_type"] == "application/json"
            assert json.loads(response["result"]) == {"echo": {"i": i}, "n": [1, 2]}
            assert "logs" not in response


def test_event_that_is_not_json_is_passed_as_text(start_python: Any) -> None:
    rt = start_python("""
        def handler(event, context):
            return {"type": type(event).__name__, "value": event}
    """)
    rt.read_status()
    assert json.loads(rt.invoke("plain words")["result"]) == {"type": "str", "value": "plain words"}


def test_exception_gives_error_with_user_stack_trace(start_python: Any) -> None:
    rt = start_python("""
        def inner():
            raise ValueError("boom")

        def handler(event, context):
            print("before the crash")
            inner()
    """)
    rt.read_status()
    response = rt.invoke()
    assert response["ok"] is False and response["fatal"] is False
    error = response["error"]
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "boom"
    assert any("index.py" in line and "inner" in line for line in error["stackTrace"])
    assert not any("bootstrap.py" in line for line in error["stackTrace"])
    assert response["logs"] == "before the crash\n"
    assert rt.invoke()["error"]["errorType"] == "ValueError"  # still serving


def test_unserializable_result_is_a_marshal_error(start_python: Any) -> None:
    rt = start_python("""
        def handler(event, context):
            return {"when": object()}
    """)
    rt.read_status()
    error = rt.invoke()["error"]
    assert error["errorType"] == "Runtime.MarshalError"
    assert "not JSON serializable" in error["errorMessage"]


def test_import_error_is_reported_and_every_request_is_fatal(start_python: Any) -> None:
    rt = start_python("""
        import module_that_does_not_exist

        def handler(event, context):
            return "unreachable"
    """)
    status = rt.read_status()
    assert status["ok"] is False
    assert status["error"]["errorType"] == "Runtime.ImportModuleError"
    assert status["error"]["errorMessage"] == (
        "Unable to import module 'index': No module named 'module_that_does_not_exist'")
    assert rt.status_closed()
    for _ in range(2):
        response = rt.invoke()
        assert response["ok"] is False and response["fatal"] is True
        assert response["error"] == status["error"]


def test_missing_module_file(start_python: Any) -> None:
    rt = start_python("x = 1\n", handler="absent.handler")
    status = rt.read_status()
    assert status["error"]["errorType"] == "Runtime.ImportModuleError"
    assert "'absent'" in status["error"]["errorMessage"]


def test_syntax_error_in_handler_file(start_python: Any) -> None:
    rt = start_python("""
        def handler(event, context)
            return 1
    """)
    status = rt.read_status()
    assert status["ok"] is False
    assert status["error"]["errorType"] == "Runtime.UserCodeSyntaxError"
    assert status["error"]["errorMessage"].startswith("Syntax error in module 'index'")
    assert any("index.py" in line for line in status["error"]["stackTrace"])
    assert rt.invoke()["fatal"] is True


def test_missing_function(start_python: Any) -> None:
    rt = start_python("def other(event, context):\n    return 1\n")
    status = rt.read_status()
    assert status["error"] == {"errorMessage": "Handler 'handler' missing on module 'index'",
                               "errorType": "Runtime.HandlerNotFound", "stackTrace": []}


def test_malformed_handler_name(start_python: Any) -> None:
    rt = start_python("x = 1\n", handler="nodot")
    assert rt.read_status()["error"]["errorType"] == "Runtime.MalformedHandlerName"


def test_dotted_module_path(start_python: Any) -> None:
    rt = start_python("def run(event, context):\n    return 'from a package'\n",
                      handler="pkg/sub/mod.run", filename="pkg/sub/mod.py")
    assert rt.read_status() == {"ok": True}
    assert rt.invoke()["result"] == "from a package"


def test_print_capture_is_per_request_under_concurrency(start_python: Any) -> None:
    rt = start_python("""
        import sys, time

        def handler(event, context):
            for i in range(5):
                print(event["tag"], i)
                sys.stderr.write(f"err-{event['tag']}\\n")
                sys.stdout.buffer.write(f"bin-{event['tag']}\\n".encode())
                time.sleep(0.02)
            return event["tag"]
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
        logs = results[tag]["logs"]
        assert results[tag]["result"] == tag
        assert logs.count(f"{tag} ") == 5 and logs.count(f"err-{tag}") == 5 and logs.count(f"bin-{tag}") == 5
        assert other not in logs


def test_log_capture_keeps_the_last_4_kib(start_python: Any) -> None:
    rt = start_python("""
        def handler(event, context):
            for i in range(2000):
                print(f"line {i:05d}")
            return "ok"
    """)
    rt.read_status()
    logs = rt.invoke()["logs"]
    assert len(logs) == 4096
    assert logs.endswith("line 01999\n")


def test_context_fields_and_remaining_time(start_python: Any) -> None:
    rt = start_python("""
        import os, sys
        def handler(event, context):
            return {"aws_request_id": context.aws_request_id, "request_id": context.request_id,
                    "function_name": context.function_name, "function_version": context.function_version,
                    "arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
                    "identity": {k: getattr(context.identity, k) for k in ("cognito_identity_id", "cognito_identity_pool_id")}, "client_context": context.client_context,
                    "log_group": context.log_group_name,
                    "remaining": context.get_remaining_time_in_millis(),
                    "cwd": os.getcwd(), "path0": sys.path[0],
                    "site": [p for p in sys.path if "site-packages" in p]}
    """)
    rt.read_status()
    deadline = int(time.time() * 1000) + 5000
    out = json.loads(rt.invoke(id="internal-1", request_id="external-1", deadline_ms=deadline)["result"])
    assert out["aws_request_id"] == "external-1"  # Lambda: the invocation's request id
    assert out["request_id"] == "external-1"
    assert out["function_name"] == "fn-test" and out["function_version"] == "7"
    assert out["arn"] == "brn:bce:cfc:bj:0123:function:fn-test:7"
    assert out["memory"] == 256
    assert out["identity"] == {"cognito_identity_id": None, "cognito_identity_pool_id": None}
    assert out["client_context"] is None
    assert out["log_group"] == "/aws/lambda/fn-test"
    assert 3000 < out["remaining"] <= 5000
    assert out["path0"] == out["cwd"] == str(rt_task_root(rt))
    assert out["site"] == []
    past = json.loads(rt.invoke(deadline_ms=int(time.time() * 1000) - 10)["result"])
    assert past["remaining"] == 0


def rt_task_root(rt: RuntimeProcess) -> str:
    with open(f"/proc/{rt.pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return os.path.realpath(env[b"EASYFAAS_TASK_ROOT"].decode())


def test_large_event_of_5_mb(start_python: Any) -> None:
    rt = start_python("""
        import hashlib
        def handler(event, context):
            return {"len": len(event["blob"]), "sha": hashlib.sha256(event["blob"].encode()).hexdigest()}
    """)
    rt.read_status()
    blob = "x" * (5 * 1024 * 1024)
    out = json.loads(rt.invoke({"blob": blob})["result"])
    assert out == {"len": len(blob), "sha": hashlib.sha256(blob.encode()).hexdigest()}


def test_environment_reaches_the_handler(start_python: Any) -> None:
    rt = start_python("""
        import os
        def handler(event, context):
            return os.environ.get("GREETING", "")
    """, GREETING="bonjour")
    rt.read_status()
    assert rt.invoke()["result"] == "bonjour"


def _request(i: int) -> dict[str, Any]:
    return {"id": f"r{i}", "event": json.dumps({"i": i}), "deadline_ms": int(time.time() * 1000) + 10_000}


def test_requests_in_one_write_and_one_request_in_many_are_each_answered_in_order(start_python: Any) -> None:
    from easyfaas import frames

    rt = start_python("""
        def handler(event, context):
            return event["i"]
    """)
    rt.read_status()
    with rt.connect() as conn:
        conn.sendall(b"".join(frames.encode(_request(i)) for i in range(3)))  # pipelined: one read
        assert [frames.recv_frame(conn)["id"] for _ in range(3)] == ["r0", "r1", "r2"]  # type: ignore[index]
        data = frames.encode(_request(3))
        for at in range(0, len(data), 7):  # a frame in pieces: each awaited by the runtime's next read
            conn.sendall(data[at:at + 7])
        reply = frames.recv_frame(conn)
        assert reply is not None and (reply["id"], reply["result"]) == ("r3", "3")


@pytest.mark.parametrize("garbage", ["too long", "not json"])
def test_a_bad_frame_closes_that_connection_only(start_python: Any, garbage: str) -> None:
    from easyfaas import frames

    rt = start_python("""
        def handler(event, context):
            return "fine"
    """)
    rt.read_status()
    with rt.connect() as conn:
        bad = frames.HEADER.pack(frames.MAX_FRAME + 1) if garbage == "too long" else frames.HEADER.pack(3) + b"{x}"
        # The frame before the bad one is answered; then the runtime closes the connection (EOF).
        conn.sendall(frames.encode(_request(0)) + bad)
        reply = frames.recv_frame(conn)
        assert reply is not None and reply["id"] == "r0"
        assert frames.recv_frame(conn) is None
    assert rt.alive() and rt.invoke()["result"] == "fine"
