"""The compiled bootstrap of ``bench/provided.py`` and its rows in the bench table, without a pod:
built with ``cc`` when there is one, reported as skipped (never a failure) when there is none."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from bench import provided, report


def test_without_a_compiler_the_compiled_bootstrap_is_skipped_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a directory with no cc in it
    binary, why = provided.compile_bootstrap(str(tmp_path))
    assert binary is None
    assert "cc" in why and "PATH" in why


def test_a_compiler_that_fails_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: no static libc' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    binary, why = provided.compile_bootstrap(str(tmp_path))
    assert binary is None
    assert "exit status 1" in why and "no static libc" in why


COLD = {"native": {"n": 2, "p50_ms": 10.0}, "provided": {"n": 2, "p50_ms": 15.0},
        "bootstrap_own_start": {"p50_ms": 1.0}, "ratio_p50": 1.5}
WARM = {"native_p50_ms": 0.4, "provided_p50_ms": 0.6, "native_p99_ms": 1.0, "provided_p99_ms": 2.5,
        "ratio_p50": 1.5, "ratio_p99": 2.5}


def _table(compiled: dict) -> list[report.Row]:
    """The rows of a ``provided`` result: the Python bootstrap's figures at 2.5× / 6×, and ``compiled``."""
    python_cold = {**COLD, "provided": {"n": 2, "p50_ms": 60.0}, "ratio_p50": 6.0,
                   "bootstrap_own_start": {"p50_ms": 45.0}}
    return report.rows({"provided": {"warm_c1": {**WARM, "ratio_p50": 2.5}, "cold": python_cold,
                                     "compiled": compiled}})


def test_the_two_times_targets_are_judged_on_the_compiled_bootstrap() -> None:
    table = _table({"warm_c1": WARM, "cold": COLD})
    budget = report.budget(table)
    assert budget == {"`provided` warm c=1 p50, compiled bootstrap": True,
                      "`provided` cold start p50 (n=2), compiled bootstrap": True}
    info = [row for row in table if row.figure.startswith("`provided` with a Python bootstrap")]
    assert len(info) == 1 and info[0].met is None and info[0].ratio == "2.50× / 6.00×"
    own = [row for row in table if row.figure.startswith("bootstrap's own start")]
    assert own[0].value == "1.00 ms / 45.00 ms"


def test_without_the_compiled_bootstrap_the_table_says_skipped_and_judges_nothing() -> None:
    table = _table({"skipped": "no C compiler: cc is not on PATH"})
    assert report.budget(table) == {}
    assert any("skipped: no C compiler" in row.value for row in table)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the bootstrap with")
def test_the_compiled_bootstrap_speaks_the_runtime_api(tmp_path: Path) -> None:
    """One invocation against a loopback stand-in for the Runtime API: the GET for ``next``, then the
    event posted back for the request id the ``next`` answer named, on the same connection, each
    request one write."""
    binary, why = provided.compile_bootstrap(str(tmp_path))
    assert binary is not None, why
    requests: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        port = listener.getsockname()[1]
        proc = subprocess.Popen([str(tmp_path / "bootstrap")], env={"AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                requests.append(conn.recv(65536))
                event = b'{"hello": "from C"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nlambda-runtime-aws-request-id: req-7\r\n"
                             b"Lambda-Runtime-Deadline-Ms: 1\r\n\r\n%s" % (len(event), event))
                posted = b""
                while b"\r\n\r\n" not in posted or not posted.endswith(event):
                    chunk = conn.recv(65536)
                    assert chunk, posted
                    posted += chunk
                requests.append(posted)
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n")
                requests.append(conn.recv(65536))  # the next GET, on the kept-alive connection
        finally:
            proc.kill()
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    assert requests[0].startswith(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n")
    head, _, body = requests[1].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /2018-06-01/runtime/invocation/req-7/response HTTP/1.1\r\n")
    assert b"Content-Length: %d" % len(event) in head and body == event
    assert requests[2].startswith(b"GET /2018-06-01/runtime/invocation/next ")
