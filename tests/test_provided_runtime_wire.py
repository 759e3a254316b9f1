"""The ``provided`` runtime's Runtime API server as a plain process, outside a sandbox: frames and
HTTP requests that arrive split across reads, or several in one read, are each answered once and
in order (the server reads a whole frame, or one request a read, without buffering it first).

fd 3 and fd 4 are arranged as the runner does (``RuntimeProcess``); the bootstrap is a raw-socket
Runtime API client that splits and batches its own requests.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from easyfaas import frames
from tests.runtime_harness import RuntimeProcess, python_runtime_argv, runtime_env, task_root  # noqa: F401

PYTHON = os.path.realpath(sys.executable)

BOOTSTRAP = f"""#!{PYTHON} -IS
import json, os, socket, time
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
sock = socket.create_connection((host, int(port)))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buffer = b""
BASE = "/2018-06-01/runtime/invocation/"
NEXT = f"GET {{BASE}}next HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n".encode()

def more():
    data = sock.recv(65536)
    if not data:
        raise SystemExit(1)
    return data

def response():
    global buffer
    while b"\\r\\n\\r\\n" not in buffer:
        buffer += more()
    head, _, buffer = buffer.partition(b"\\r\\n\\r\\n")
    lines = head.decode().split("\\r\\n")
    headers = {{name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}}
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        buffer += more()
    body, buffer = buffer[:length], buffer[length:]
    return int(lines[0].split(" ")[1]), headers, body

# The first `next` in two pieces, split inside a header line.
sock.sendall(NEXT[:45])
time.sleep(0.05)
sock.sendall(NEXT[45:])
status, headers, event = response()
calls = 0
while True:
    calls += 1
    request_id = headers["lambda-runtime-aws-request-id"]
    result = json.dumps({{"event": json.loads(event), "request_id": request_id, "call": calls}}).encode()
    head = (f"POST {{BASE}}{{request_id}}/response HTTP/1.1\\r\\nHost: api\\r\\nContent-Type: application/json\\r\\n"
            f"Content-Length: {{len(result)}}\\r\\n\\r\\n").encode()
    if calls % 2:
        sock.sendall(head)  # the head, then the body alone
        time.sleep(0.05)
        sock.sendall(result)
        accepted = response()
        sock.sendall(NEXT)
    else:
        sock.sendall(head + result + NEXT)  # the answer and the next `next` in one write
        accepted = response()
    if accepted[0] != 202 or json.loads(accepted[2]) != {{"status": "OK"}}:
        raise SystemExit(f"unexpected answer to the response: {{accepted}}")
    status, headers, event = response()
"""


def _frame(n: int) -> bytes:
    return frames.encode({"id": f"f-{n}", "event": json.dumps({"n": n}), "log": False, "request_id": f"req-{n}",
                          "deadline_ms": int(time.time() * 1000) + 10_000})


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(child) for child in f.read().split()]
    return kids


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # exited, waiting for its (killed) parent's reaper
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_split_and_batched_frames_and_requests_are_each_answered_in_order(task_root: Path) -> None:
    bootstrap = task_root / "bootstrap"
    bootstrap.write_text(BOOTSTRAP)
    bootstrap.chmod(0o755)
    rt = RuntimeProcess(python_runtime_argv(), runtime_env(task_root, "index.handler", EASYFAAS_RUNTIME_MODE="provided",
                                                           EASYFAAS_RUNTIME_API_ADDRESS="127.0.0.1:0"))
    children: list[int] = []
    try:
        assert rt.read_status() == {"ok": True}, rt.output()
        children = _children(rt.pid)
        assert len(children) == 1  # the bootstrap
        conn = rt.connect()

        def answers(count: int) -> list[Any]:
            out = []
            for _ in range(count):
                response = frames.recv_frame(conn)
                assert response is not None and response["ok"] is True, (response, rt.output())
                out.append((response["id"], json.loads(response["result"])))
            return out

        def expected(n: int) -> tuple[str, dict[str, Any]]:
            return f"f-{n}", {"event": {"n": n}, "request_id": f"req-{n}", "call": n}

        conn.sendall(_frame(1))  # one frame a write, as the controller writes them
        assert answers(1) == [expected(1)]
        conn.sendall(_frame(2) + _frame(3))  # two in one write: answered one after the other
        assert answers(2) == [expected(2), expected(3)]
        split = _frame(4)
        for piece in (split[:2], split[2:9], split[9:]):  # inside the length prefix, then the body
            conn.sendall(piece)
            time.sleep(0.05)
        assert answers(1) == [expected(4)]
        conn.sendall(_frame(5) + _frame(6)[:7])  # a whole frame and the start of the next
        time.sleep(0.05)
        conn.sendall(_frame(6)[7:])
        assert answers(2) == [expected(5), expected(6)]
        conn.close()
    finally:
        rt.close()
    for child in children:  # the bootstrap exits once the server's end of its connection is gone
        assert _gone(child), f"bootstrap {child} outlived the server"
