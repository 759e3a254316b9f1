"""Start a server process that listens on a loopback port, wait until it accepts connections, and
stop it: the real brokers (Mosquitto, nats-server) the benchmarks and tests run their traffic
through. Each caller keeps its own configuration; this module only owns the process's lifetime."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def start_listening(argv: list[str], port: int, *, name: str, stderr_log: Path | None = None,
                    log: Callable[[], str] | None = None, timeout: float = START_TIMEOUT) -> subprocess.Popen[bytes]:
    """Start ``argv`` and return once 127.0.0.1:``port`` accepts a connection.

    ``stderr_log`` (appended to) receives the process's stderr; ``log`` reads what explains an early
    exit (by default the tail of ``stderr_log``). Raises RuntimeError when the process exits first or
    does not listen within ``timeout`` (then it is stopped)."""
    if stderr_log is not None:
        with open(stderr_log, "ab") as err:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if log is None and stderr_log is not None:
        log = lambda: stderr_log.read_text(errors="replace")  # noqa: E731
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(log() if log else '')[-2000:]}") from None
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{name} did not start listening")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT) -> None:
    """Send ``sig`` and wait for the exit; kill the process when it does not exit within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
