"""What a pre-started Node.js runtime would save: runtime start to init status, exec vs standby.

Outside any sandbox (the same node binary and ``bootstrap.js``): *exec* starts node with the
function's environment, as the runner does today; *standby* starts node with
``EASYFAAS_STANDBY_FD`` ahead of time and times only from writing the function's environment on
that fd to the init status — the part a cold start would still wait for if the runner kept a
pre-started node in each sandbox (docs/performance.md). Both answer one real invocation over fd 3.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import median, percentile

BOOTSTRAP = Path(__file__).resolve().parent.parent / "runner" / "runtimes" / "nodejs" / "bootstrap.js"
_HANDLER = "exports.handler = async (event) => event;\n"


def _start(node: str, task: str, standby: bool) -> float:
    env = {"EASYFAAS_HANDLER": "index.handler", "EASYFAAS_TASK_ROOT": task, "PATH": "/usr/bin:/bin"}
    sock_path = os.path.join(task, f"rt-{time.monotonic_ns()}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen()
    status_r, status_w = os.pipe()
    assign_r, assign_w = os.pipe()

    def fds() -> None:
        os.dup2(listener.fileno(), 3)
        os.dup2(status_w, 4)
        os.dup2(assign_r, 5)

    t0 = time.perf_counter()
    proc = subprocess.Popen([node, str(BOOTSTRAP)], preexec_fn=fds, pass_fds=(3, 4, 5), stdin=subprocess.DEVNULL,
                            env={"EASYFAAS_STANDBY_FD": "5", "PATH": env["PATH"]} if standby else env)
    os.close(status_w)
    os.close(assign_r)
    try:
        if standby:
            time.sleep(0.3)  # node is up and blocked on fd 5 well before this
            t0 = time.perf_counter()
            os.write(assign_w, (json.dumps({"env": env}) + "\n").encode())
        status = os.read(status_r, 4096)
        elapsed = (time.perf_counter() - t0) * 1000
        if not json.loads(status).get("ok"):
            raise RuntimeError(f"the Node.js runtime failed to start: {status!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(sock_path)
            body = json.dumps({"id": "1", "event": '{"n": 1}'}).encode()
            conn.sendall(len(body).to_bytes(4, "big") + body)
            head = conn.recv(4)
            reply = json.loads(conn.recv(int.from_bytes(head, "big")))
        if reply.get("ok") is not True or reply.get("result") != '{"n":1}':
            raise RuntimeError(f"the Node.js runtime answered {reply!r}")
        return elapsed
    finally:
        proc.kill()
        proc.wait()
        for fd in (status_r, assign_w):
            os.close(fd)
        listener.close()
        os.unlink(sock_path)


def node_standby(runs: int) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        return {"error": "node is not installed"}
    task = tempfile.mkdtemp(prefix="efbench-node-")
    try:
        Path(task, "index.js").write_text(_HANDLER)
        exec_ms = [_start(node, task, False) for _ in range(runs)]
        standby_ms = [_start(node, task, True) for _ in range(runs)]
    finally:
        shutil.rmtree(task, ignore_errors=True)
    return {"exec_p50_ms": round(median(exec_ms), 2), "exec_p99_ms": round(percentile(exec_ms, 99), 2),
            "standby_p50_ms": round(median(standby_ms), 2), "standby_p99_ms": round(percentile(standby_ms, 99), 2),
            "runs": runs}
