"""A language runtime as a plain process, outside a sandbox, with the runner's fd layout: fd 3 a
real listening unix socket, fd 4 a real status pipe, the task root a temp dir
(EASYFAAS_TASK_ROOT). The Python, Node.js, exec and provided runtime tests start theirs with
:class:`RuntimeProcess`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from easyfaas import frames

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
PYTHON = VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable


NODE = shutil.which("node") or "/usr/bin/node"
NODE_BOOTSTRAP = str(REPO / "runner" / "runtimes" / "nodejs" / "bootstrap.js")


def python_runtime_argv() -> list[str]:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from runner.runtimes.python import bootstrap; bootstrap.main()")
    return [PYTHON, "-I", "-S", "-c", code]


class RuntimeProcess:
    """A language runtime started by hand with the runner's fd layout (3: listener, 4: status)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ef-rt-"))  # short: unix socket paths are ≤ 107 bytes
        self.socket_path = str(self.dir / "invoke.sock")
        self.output_path = self.dir / "output.log"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(64)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        # Sources above 10 so the dup2s onto 3 and 4 cannot clobber each other.
        high_listener = fcntl.fcntl(listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        high_status = fcntl.fcntl(status_w, fcntl.F_DUPFD_CLOEXEC, 10)
        try:
            self.pid = os.posix_spawn(argv[0], argv, env, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(self.output_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, high_listener, 3),
                (os.POSIX_SPAWN_DUP2, high_status, 4),
            ])
        finally:
            for fd in (high_listener, high_status, status_w):
                os.close(fd)
            listener.close()
        self.status_fd = status_r
        self.exit_status: int | None = None

    def read_status(self, timeout: float = 10.0) -> dict[str, Any]:
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.status_fd], [], [], remaining)[0]:
                raise AssertionError(f"no init status within {timeout}s; output: {self.output()}")
            chunk = os.read(self.status_fd, 65536)
            if not chunk:
                break
            data += chunk
        assert data, f"status pipe closed without a status; output: {self.output()}"
        return json.loads(data.split(b"\n")[0])

    def status_closed(self, timeout: float = 5.0) -> bool:
        """After the status line, the runtime must close fd 4 (EOF)."""
        if not select.select([self.status_fd], [], [], timeout)[0]:
            return False
        return os.read(self.status_fd, 1) == b""

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(self.socket_path)
        return sock

    def invoke(self, event: Any = "{}", conn: socket.socket | None = None, **fields: Any) -> dict[str, Any]:
        frame = {"id": fields.pop("id", "req-1"), "event": event if isinstance(event, str) else json.dumps(event),
                 "deadline_ms": int(time.time() * 1000) + 10_000, "log": True}
        frame.update(fields)
        own = conn is None
        sock = self.connect() if own else conn
        try:
            frames.send_frame(sock, frame)
            response = frames.recv_frame(sock)
        finally:
            if own:
                sock.close()
        assert response is not None, f"runtime closed the connection; output: {self.output()}"
        return response

    def invoke_many(self, frames_to_send: list[dict[str, Any]], window: int = 64) -> list[dict[str, Any]]:
        """Every frame on one connection, up to ``window`` in flight at once; the responses in order."""
        responses: list[dict[str, Any]] = []
        with self.connect() as sock:
            for start in range(0, len(frames_to_send), window):
                batch = frames_to_send[start:start + window]
                sock.sendall(b"".join(frames.encode(f) for f in batch))
                for _ in batch:
                    response = frames.recv_frame(sock)
                    assert response is not None, f"runtime closed the connection; output: {self.output()}"
                    responses.append(response)
        return responses

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        if self.exit_status is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.exit_status = status
            return False
        return True

    def close(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.status_fd)
        shutil.rmtree(self.dir, ignore_errors=True)


def runtime_env(task_root: Path, handler: str, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "EASYFAAS_TASK_ROOT": str(task_root), "EASYFAAS_HANDLER": handler,
           "EASYFAAS_FUNCTION_NAME": "fn-test", "EASYFAAS_FUNCTION_VERSION": "7",
           "EASYFAAS_FUNCTION_BRN": "brn:bce:cfc:bj:0123:function:fn-test:7",
           "EASYFAAS_MEMORY_SIZE": "256", "EASYFAAS_TIMEOUT": "3"}
    env.update(extra)
    return env


@pytest.fixture
def task_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ef-task-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def started_runtime(kind: str, python_code: str, node_code: str, prefix: str = "ef-rt-") -> Iterator[RuntimeProcess]:
    """The ``python`` or ``nodejs`` runtime serving ``index.handler`` of the given code (dedented),
    its init status read; skips when Node.js is not installed."""
    if kind == "nodejs" and not os.path.exists(NODE):
        pytest.skip("node is not installed")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if kind == "python":
        (root / "index.py").write_text(textwrap.dedent(python_code))
        argv = python_runtime_argv()
    else:
        (root / "index.js").write_text(textwrap.dedent(node_code))
        argv = [os.path.realpath(NODE), NODE_BOOTSTRAP]
    rt = RuntimeProcess(argv, runtime_env(root, "index.handler"))
    try:
        assert rt.read_status() == {"ok": True}
        yield rt
    finally:
        rt.close()
        shutil.rmtree(root, ignore_errors=True)
