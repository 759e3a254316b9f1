"""The exec runtime (the Python bootstrap with EASYFAAS_RUNTIME_MODE=exec), outside a sandbox."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.runtime_harness import RuntimeProcess, python_runtime_argv, runtime_env


@pytest.fixture
def start_exec() -> Iterator[Any]:
    roots: list[Path] = []
    started: list[RuntimeProcess] = []

    def start(script: str | None, handler: str = "handler.sh", mode: int = 0o755, **env: str) -> RuntimeProcess:
        root = Path(tempfile.mkdtemp(prefix="ef-exec-"))
        roots.append(root)
        if script is not None:
            path = root / handler
            path.write_text(textwrap.dedent(script).lstrip())
            path.chmod(mode)
        rt = RuntimeProcess(python_runtime_argv(), runtime_env(root, handler, EASYFAAS_RUNTIME_MODE="exec", **env))
        started.append(rt)
        return rt

    yield start
    for rt in started:
        rt.close()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def test_script_echoing_stdin(start_exec: Any) -> None:
    rt = start_exec("""
        #!/bin/sh
        cat
    """)
    assert rt.read_status() == {"ok": True}
    response = rt.invoke({"a": [1, 2]})
    assert response["ok"] is True
    assert json.loads(response["result"]) == {"a": [1, 2]}
    assert response["content_type"] == "application/json"
    text = rt.invoke("just text")
    assert text["result"] == "just text" and text["content_type"] == "text/plain; charset=utf-8"
    broken = rt.invoke("{not json")
    assert broken["result"] == "{not json" and broken["content_type"] == "text/plain; charset=utf-8"


def test_stderr_is_the_log_and_request_env_is_set(start_exec: Any) -> None:
    rt = start_exec("""
        #!/bin/sh
        echo "working on $EASYFAAS_REQUEST_ID in $(pwd)" >&2
        printf '%s' "$GREETING"
    """, GREETING="hi")
    rt.read_status()
    response = rt.invoke(id="req-42")
    assert response["result"] == "hi"
    assert response["logs"] == f"working on req-42 in {os.path.realpath(rt_root(rt))}\n"
    assert "logs" not in rt.invoke(log=False)


def rt_root(rt: RuntimeProcess) -> str:
    with open(f"/proc/{rt.pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return env[b"EASYFAAS_TASK_ROOT"].decode()


def test_non_zero_exit_is_an_error_with_the_last_stderr_line(start_exec: Any) -> None:
    rt = start_exec("""
        #!/bin/sh
        echo "first" >&2
        echo "disk on fire" >&2
        exit 3
    """)
    rt.read_status()
    response = rt.invoke()
    assert response["ok"] is False and response["fatal"] is False
    assert response["error"]["errorType"] == "Runtime.ExitError"
    assert response["error"]["errorMessage"] == "exit status 3: disk on fire"
    assert response["logs"] == "first\ndisk on fire\n"


def test_missing_handler_is_an_init_error(start_exec: Any) -> None:
    rt = start_exec(None, handler="nothing-here.sh")
    status = rt.read_status()
    assert status["ok"] is False
    assert status["error"]["errorType"] == "Runtime.HandlerNotFound"
    response = rt.invoke()
    assert response["fatal"] is True and response["error"] == status["error"]


def test_handler_that_is_not_executable(start_exec: Any) -> None:
    rt = start_exec("#!/bin/sh\necho hi\n", mode=0o644)
    status = rt.read_status()
    assert status["error"]["errorType"] == "Runtime.HandlerNotFound"
    assert "not an executable file" in status["error"]["errorMessage"]


def test_handler_outside_the_task_root_is_refused(start_exec: Any) -> None:
    rt = start_exec(None, handler="../../usr/bin/env")
    assert rt.read_status()["error"]["errorType"] == "Runtime.HandlerNotFound"


def test_deadline_kills_the_process(start_exec: Any) -> None:
    rt = start_exec("""
        #!/bin/sh
        sleep 30
    """)
    rt.read_status()
    began = time.monotonic()
    response = rt.invoke(deadline_ms=int(time.time() * 1000) + 300)
    assert time.monotonic() - began < 3
    assert response["error"]["errorType"] == "Runtime.Timeout"


def test_large_event_of_5_mb(start_exec: Any) -> None:
    rt = start_exec("""
        #!/bin/sh
        wc -c
    """)
    rt.read_status()
    blob = "y" * (5 * 1024 * 1024)
    response = rt.invoke(blob)
    assert response["ok"] is True
    assert int(response["result"].strip()) == len(blob)


def test_large_output_comes_back_whole(start_exec: Any) -> None:
    rt = start_exec("""
        #!/bin/sh
        cat
    """)
    rt.read_status()
    blob = "z" * (5 * 1024 * 1024)
    assert rt.invoke(blob)["result"] == blob


def test_memory_peak_counts_the_invocation_s_process(start_exec: Any) -> None:
    # A child's peak counts once it is waited for (RUSAGE_CHILDREN), on top of the runtime's own.
    rt = start_exec(f"""
        #!{os.path.realpath(sys.executable)}
        import sys
        size = int(sys.stdin.read() or 0) << 20
        hog = b"x" * size
        print(len(hog))
    """)
    assert rt.read_status() == {"ok": True}
    small = rt.invoke("0")
    assert small["ok"] and small["memory_peak_kb"] > 0
    big = rt.invoke("60")
    assert big["ok"] and big["result"].strip() == str(60 << 20)
    assert big["memory_peak_kb"] >= (60 << 10) and big["memory_peak_kb"] > small["memory_peak_kb"]
