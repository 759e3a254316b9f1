"""A real Mosquitto MQTT broker on a loopback port, with its own config and persistence directory,
restartable on its port: the event-source benchmarks and tests run their MQTT traffic through it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from bench.local_server import start_listening, stop_process
from easyfaas.pod_names import free_port


class Mosquitto:
    """A mosquitto on 127.0.0.1 with persistence in ``directory``; restartable on its port."""

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate, key) for a second listener, on ``tls_port`` (``tls_url``)."""
        self.directory = directory
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = directory / "mosquitto.conf"
        # user root: the test runs as root and the files are in its temporary directory.
        lines = [f"listener {self.port} 127.0.0.1", "user root", "persistence true", f"persistence_location {directory}/",
                 "autosave_interval 1", "max_queued_messages 10000", "max_inflight_messages 100",
                 f"log_dest file {directory}/mosquitto.log"]
        self.tls_port = 0
        if tls is not None:
            self.tls_port = free_port()
            self.tls_url = f"mqtts://127.0.0.1:{self.tls_port}"
            lines += [f"listener {self.tls_port} 127.0.0.1", f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if users:
            passwd = directory / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            passwd.chmod(0o600)
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_listening(["mosquitto", "-c", str(self.config)], self.port, name="mosquitto", log=self.log)

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None
