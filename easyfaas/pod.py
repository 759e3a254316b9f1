"""Runs one whole pod on this machine: `runner prepare`, then funclet, stubs and controller.

The pod has two forms. Separate daemons: funclet, stubs and controller (and the HTTP trigger,
given a port) each a process of its own, as compose and Kubernetes run them. All-in-one
(``PodConfig.all_in_one``, what `make run` uses): the funclet, and one process running the others
(``easyfaas.all_in_one``), named ``all-in-one`` here; the single daemons' names stand for that
process in :meth:`Pod.pid`, :meth:`Pod.kill`, :meth:`Pod.restart` and the like.

Used by `make run` (in the foreground, until SIGINT/SIGTERM) and by the end-to-end tests (each
test session gets a pod with its own ports, directories, bridge and cgroup names). Children are
stopped in reverse order of start, each with SIGTERM and then SIGKILL after a deadline, so the
funclet always gets the chance to tear down its sandboxes (and the controller to drain).

A daemon that dies is restarted by :meth:`Pod.supervise` (``make run`` uses it): a restarted
funclet cleans up what its predecessor left and rebuilds the pool, a restarted controller adopts
the funclet's sandboxes. Tests use :meth:`Pod.kill` and :meth:`Pod.restart` on single daemons.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

from easyfaas.config import COMMON_OPTIONS

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PodConfig:
    state_dir: Path = Path("/var/faas")
    run_dir: Path = Path("/var/run/faas")
    host: str = "127.0.0.1"
    controller_port: int = 8001
    stubs_port: int = 8002
    httptrigger_port: int = 0            # 0: no HTTP trigger
    container_num: int = 10
    pod_name: str = "funclet"
    network: str = "bridge"
    bridge_name: str = "efbr0"
    bridge_ip: str = "172.33.0.1/24"
    veth_prefix: str = "efv"
    python: str = sys.executable
    log_dir: Path | None = None          # None: children write to our stderr
    funclet_args: list[str] = field(default_factory=list)
    controller_args: list[str] = field(default_factory=list)
    stubs_args: list[str] = field(default_factory=list)
    httptrigger_args: list[str] = field(default_factory=list)
    # One process for controller, stubs and the HTTP trigger; their *_args are given to it with
    # each flag under the service's prefix (shared flags, such as --log-level, as they are).
    all_in_one: bool = False
    all_in_one_args: list[str] = field(default_factory=list)
    # API keys required on every TCP daemon (--auth required), and the funclet's outbound guard on;
    # the first admin key is written to auth_dir/admin.key.
    auth: bool = False
    start_timeout: float = 60.0
    stop_timeout: float = 40.0           # per daemon: SIGTERM, then SIGKILL after this long

    @property
    def runtime_dir(self) -> Path:
        return self.state_dir / "runtime"

    @property
    def rootfs_dir(self) -> Path:
        return self.state_dir / "runner" / "rootfs"

    @property
    def function_dir(self) -> Path:
        return self.state_dir / "funcData"

    @property
    def auth_dir(self) -> Path:
        """The pod's API keys (hashed), key files and sealed secrets, shared by stubs and the controller."""
        return self.state_dir / "auth"

    @property
    def controller_state_dir(self) -> Path:
        return self.state_dir / "controller"

    @property
    def funclet_sock(self) -> Path:
        return self.run_dir / ".funcletapi.sock"

    @property
    def controller_url(self) -> str:
        return f"http://{self.host}:{self.controller_port}"

    @property
    def stubs_url(self) -> str:
        return f"http://{self.host}:{self.stubs_port}"

    @property
    def httptrigger_url(self) -> str:
        return f"http://{self.host}:{self.httptrigger_port}"

    @property
    def daemons(self) -> tuple[str, ...]:
        """The pod's processes, in start order."""
        if self.all_in_one:
            return ("funclet", ALL_IN_ONE)
        return ("funclet", "stubs", "controller", *(("httptrigger",) if self.httptrigger_port else ()))


class PodError(RuntimeError):
    """A daemon of the pod failed to start; the message carries the tail of its log."""


ALL_IN_ONE = "all-in-one"
_IN_ALL_IN_ONE = ("stubs", "controller", "httptrigger")
# Flags every daemon has and the all-in-one process's own (its services share them): not prefixed.
_SHARED_FLAGS = {o.name for o in COMMON_OPTIONS} | {"event-loop", "services"} | {
    "auth", "auth-dir", "allow-unauthenticated", "tls-cert", "tls-key", "tls-ca", "outbound-allow"}


class Pod:
    def __init__(self, config: PodConfig) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop = threading.Event()
        self.gave_up: str | None = None  # a daemon the supervisor stopped restarting

    # -- start -------------------------------------------------------------------------------------

    def prepare(self) -> None:
        c = self.config
        subprocess.run([c.python, "-m", "runner", "prepare", "--runtime-dir", str(c.runtime_dir),
                        "--rootfs-dir", str(c.rootfs_dir)], check=True, cwd=REPO_ROOT, env=self._env())

    def start(self) -> None:
        self.prepare()
        try:
            for name in self.config.daemons:
                self.start_daemon(name)
        except BaseException:
            self.stop()
            raise

    def process_of(self, name: str) -> str:
        """The process that runs daemon ``name`` (in the all-in-one form, one runs several)."""
        return ALL_IN_ONE if self.config.all_in_one and name in _IN_ALL_IN_ONE else name

    def daemon_args(self, name: str) -> list[str]:
        c = self.config
        if name == ALL_IN_ONE:
            services = ["stubs", "controller", *(["httptrigger"] if c.httptrigger_port else [])]
            args = ["-m", "easyfaas.all_in_one", "--services", ",".join(services), "--auth-dir", str(c.auth_dir),
                    *(["--auth", "required"] if c.auth else []),
                    *_under_prefix("stubs", self.daemon_args("stubs")[2:]),
                    *_under_prefix("controller", self.daemon_args("controller")[2:])]
            if c.httptrigger_port:
                args += _under_prefix("httptrigger", self.daemon_args("httptrigger")[2:])
            return [*args, *c.all_in_one_args]
        if name == "funclet":
            return ["-m", "funclet", "--api-sock", str(c.funclet_sock),
                    "--container-num", str(c.container_num), "--pod-name", c.pod_name,
                    "--state-dir", str(c.state_dir), "--run-dir", str(c.run_dir),
                    "--runtime-path", str(c.runtime_dir), "--rootfs-path", str(c.rootfs_dir),
                    "--network", c.network, "--bridge-name", c.bridge_name,
                    "--bridge-ip", c.bridge_ip, "--veth-prefix", c.veth_prefix,
                    *(["--outbound-guard", "true"] if c.auth else []), *c.funclet_args]
        if name == "stubs":
            return ["-m", "stubs", "--host", c.host, "--port", str(c.stubs_port),
                    "--function-dir", str(c.function_dir), "--runtime-dir", str(c.runtime_dir),
                    "--controller-url", c.controller_url, *self._auth_dir_arg(name), *c.stubs_args]
        if name == "controller":
            return ["-m", "controller", "--host", c.host, "--port", str(c.controller_port),
                    "--funclet-api-sock", str(c.funclet_sock), "--repository-endpoint", c.stubs_url,
                    "--state-dir", str(c.controller_state_dir), *self._auth_dir_arg(name), *c.controller_args]
        if name == "httptrigger":
            return ["-m", "httptrigger", "--host", c.host, "--port", str(c.httptrigger_port),
                    "--controller-host", c.controller_url, "--repository-endpoint", c.stubs_url,
                    *self._auth_dir_arg(name), *c.httptrigger_args]
        raise ValueError(f"unknown daemon {name!r}; the pod runs {', '.join(c.daemons)}")

    def _auth_dir_arg(self, name: str) -> list[str]:
        # In the all-in-one form the process is given these once (its services share them).
        if self.config.all_in_one:
            return []
        return ["--auth-dir", str(self.config.auth_dir), *(["--auth", "required"] if self.config.auth else [])]

    def probe(self, name: str) -> Callable[[], bool]:
        c = self.config
        if name == "funclet":
            return lambda: _unix_http_ok(c.funclet_sock, "/healthz")
        if name == ALL_IN_ONE:
            probes = [self.probe(n) for n in _IN_ALL_IN_ONE if n != "httptrigger" or c.httptrigger_port]
            return lambda: all(p() for p in probes)
        port = {"stubs": c.stubs_port, "controller": c.controller_port, "httptrigger": c.httptrigger_port}[name]
        return lambda: _tcp_http_ok(c.host, port, "/healthz")

    def start_daemon(self, name: str) -> None:
        """Start one daemon and wait until it answers its health check."""
        name = self.process_of(name)
        with self._lock:
            if self._stopping:
                raise PodError(f"not starting {name}: the pod is stopping")
            self._spawn(name, self.daemon_args(name))
        self._wait_ready(name, self.probe(name))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        c = self.config
        out: IO[bytes] | None = None
        if c.log_dir is not None:
            c.log_dir.mkdir(parents=True, exist_ok=True)
            old = self._logs.pop(name, None)
            if old is not None:
                old.close()
            out = open(c.log_dir / f"{name}.log", "ab")
            self._logs[name] = out
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the daemons in order.
        # Parent-death signal: if we are killed outright, the daemons still shut down cleanly.
        self.procs[name] = subprocess.Popen([c.python, *args], cwd=REPO_ROOT, env=self._env(),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_ready(self, name: str, probe) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + self.config.start_timeout
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PodError(f"{name} exited with status {proc.returncode} during start:\n{self.log_tail(name)}")
            if probe():
                return
            time.sleep(0.05)
        raise PodError(f"{name} did not become ready in {self.config.start_timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        name = self.process_of(name)
        if self.config.log_dir is None:
            return "(log went to the terminal)"
        try:
            text = (self.config.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- single daemons ----------------------------------------------------------------------------

    def pid(self, name: str) -> int:
        proc = self.procs.get(self.process_of(name))
        return proc.pid if proc is not None and proc.poll() is None else 0

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 10.0) -> int | None:
        """Send ``sig`` to one daemon; for SIGKILL/SIGTERM wait for it to exit. Returns its status."""
        with self._lock:
            proc = self.procs.get(self.process_of(name))
            if proc is None or proc.poll() is not None:
                return proc.returncode if proc is not None else None
            proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            try:
                return proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        return None

    def restart(self, name: str) -> None:
        """Stop one daemon (SIGTERM, if it still runs) and start it again."""
        self.stop_daemon(name)
        self.start_daemon(name)

    def stop_daemon(self, name: str, timeout: float | None = None) -> int | None:
        with self._lock:
            proc = self.procs.get(self.process_of(name))
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.config.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    # -- supervision -------------------------------------------------------------------------------

    def supervise(self, poll: float = 0.2, max_restarts: int = 5, window: float = 60.0) -> None:
        """Restart daemons that exit unexpectedly, in a background thread, until stop().

        More than ``max_restarts`` restarts of one daemon within ``window`` seconds stops the
        supervision of that daemon (a crash loop needs an operator, not more restarts).
        """
        if self._supervisor is not None:
            return
        history: dict[str, list[float]] = {}

        def loop() -> None:
            while not self._supervisor_stop.wait(poll):
                for name in self.config.daemons:
                    try:
                        restart_if_dead(name)
                    except Exception as exc:  # noqa: BLE001 - the supervisor must not die: see stop()
                        print(f"supervising {name} failed: {exc}", file=sys.stderr, flush=True)

        def restart_if_dead(name: str) -> None:
            with self._lock:
                proc = self.procs.get(name)
                if self._stopping or proc is None or proc.poll() is None:
                    return
            now = time.monotonic()
            recent = [t for t in history.get(name, []) if now - t < window]
            if len(recent) >= max_restarts:
                if self.gave_up is None:
                    self.gave_up = name
                    print(f"{name} keeps exiting ({len(recent)} restarts in {window:.0f}s); giving up",
                          file=sys.stderr, flush=True)
                return
            history[name] = [*recent, now]
            print(f"{name} exited with status {proc.returncode}; restarting it", file=sys.stderr, flush=True)
            try:
                self.start_daemon(name)
                self.restarts[name] = self.restarts.get(name, 0) + 1
            except PodError as exc:
                print(str(exc), file=sys.stderr, flush=True)

        self._supervisor_stop.clear()
        self._supervisor = threading.Thread(target=loop, name="pod-supervisor", daemon=True)
        self._supervisor.start()

    def _stop_supervisor(self) -> None:
        thread, self._supervisor = self._supervisor, None
        if thread is not None:
            self._supervisor_stop.set()
            thread.join()

    # -- stop --------------------------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> dict[str, int | None]:
        with self._lock:
            self._stopping = True
        codes: dict[str, int | None] = {}
        for name in reversed([n for n in self.config.daemons if n in self.procs]):
            codes[name] = self.stop_daemon(name, timeout)
        # Only now: a daemon the supervisor thread restarted gets its parent-death signal when
        # that thread ends, and must get the chance to stop in order first.
        self._stop_supervisor()
        with self._lock:
            self.procs.clear()
            for f in self._logs.values():
                f.close()
            self._logs.clear()
        self._stopping = False
        return codes

    def wait(self) -> str:
        """Block until a daemon exits (or a signal arrives); return the name of the one that exited."""
        while True:
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    return name
            time.sleep(0.2)

    def wait_supervised(self) -> str:
        """Block while the supervisor keeps the pod running; returns the daemon it gave up on."""
        while self.gave_up is None:
            time.sleep(0.5)
        return self.gave_up


def _under_prefix(service: str, args: Sequence[str]) -> list[str]:
    """A daemon's flags as the all-in-one process names them: ``--port`` → ``--<service>-port``."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = name.replace("_", "-")
            if name not in _SHARED_FLAGS:
                arg = f"--{service}-{name}{eq}{value}"
        out.append(arg)
    return out


def _die_with_parent() -> None:
    from easyfaas.syscalls import set_parent_death_signal

    set_parent_death_signal(signal.SIGTERM)


def _tcp_http_ok(host: str, port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _unix_http_ok(sock_path: Path, path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(str(sock_path))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: funclet\r\nConnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="run-pod", description="Run a whole EasyFaaS pod in the foreground.")
    p.add_argument("--state-dir", default="/var/faas")
    p.add_argument("--run-dir", default="/var/run/faas")
    p.add_argument("--controller-port", type=int, default=8001)
    p.add_argument("--stubs-port", type=int, default=8002)
    p.add_argument("--container-num", type=int, default=10)
    p.add_argument("--network", default="bridge", choices=["bridge", "none"])
    p.add_argument("--separate-daemons", action="store_true",
                   default=os.environ.get("EASYFAAS_SEPARATE_DAEMONS", "") not in ("", "0"),
                   help="run controller and stubs as processes of their own (default: one all-in-one process "
                        "beside the funclet; also EASYFAAS_SEPARATE_DAEMONS=1)")
    p.add_argument("--auth", action="store_true",
                   default=os.environ.get("EASYFAAS_AUTH", "").lower() not in ("", "0", "false", "no", "off"),
                   help="require API keys (also EASYFAAS_AUTH=1); the first admin key goes to <state-dir>/auth/admin.key")
    a = p.parse_args(argv)
    pod = Pod(PodConfig(state_dir=Path(a.state_dir), run_dir=Path(a.run_dir), controller_port=a.controller_port,
                        stubs_port=a.stubs_port, container_num=a.container_num, network=a.network,
                        all_in_one=not a.separate_daemons, auth=a.auth))
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Set both explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        pod.start()
        print(f"EasyFaaS pod is up: controller {pod.config.controller_url}, stubs {pod.config.stubs_url} "
              f"(Ctrl-C stops it)", file=sys.stderr, flush=True)
        if a.auth:
            print(f"API keys are required; the admin key is in {pod.config.auth_dir / 'admin.key'}",
                  file=sys.stderr, flush=True)
        pod.supervise()
        failed = pod.wait_supervised()
        print(f"{failed} keeps failing; stopping the pod", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except PodError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        pod.stop()


if __name__ == "__main__":
    raise SystemExit(main())
