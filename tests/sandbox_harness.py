"""Real sandboxes without a pod, for tests that play the funclet (as root): a zygote on a host of
prepared runtimes (``host``, one per module), sandboxes spawned through it (``spawn``), code
directories to bind into them (``code_dirs``), and forked children in network namespaces of their
own with sockets (and pyroute2's ``IPRoute``, to look at them from inside) in them.

The fixtures are shared through ``pytest_plugins`` in tests/conftest.py. The host makes the slots
dir a shared mount, starts the zygote with ``zygote_command`` and spawns sandboxes with a
SandboxSpec (in a real v1 memory cgroup when the host has one); code and runtimes are bind-mounted
onto a slot from the host side after the sandbox is ready (so they can only arrive by propagation).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyroute2 import IPRoute

from easyfaas import frames
from easyfaas import syscalls as sc
from runner import control
from runner.control import zygote_command
from runner.prepare import host_binds, prepare
from tests.fakes.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
UID = 20007


def mounted_under(prefix: str) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return points


def unmount_all_under(prefix: str) -> None:
    for point in sorted(mounted_under(prefix), key=len, reverse=True):
        try:
            sc.umount(point, sc.MNT_DETACH)
        except OSError:
            pass


def pids_in_pidns(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@dataclass
class Host:
    base: Path
    slots: Path
    runtime_dir: Path
    rootfs: Path
    zygote: subprocess.Popen
    zygote_sock: socket.socket
    binds: list[dict[str, str]]
    symlinks: dict[str, str]

    def runtime(self, name: str) -> dict[str, Any]:
        return yaml.safe_load((self.runtime_dir / name / "runtime.yaml").read_text())


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    base = Path(tempfile.mkdtemp(prefix="ef-sbx-"))
    slots = base / "slots"
    slots.mkdir()
    shared = False
    zygote = None
    ours = None
    try:
        prepare(str(base / "runtime"), str(base / "rootfs"), python=str(VENV_PYTHON), uid_base=20000, uid_count=16)
        # What the funclet does at start: the slots dir becomes its own shared mount, so the
        # mounts it makes under it later propagate into every sandbox.
        sc.mount(str(slots), str(slots), None, sc.MS_BIND)
        shared = True
        sc.mount(None, str(slots), None, sc.MS_SHARED)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NODE_"))}
        zygote = subprocess.Popen(zygote_command(str(VENV_PYTHON), str(REPO), theirs.fileno()),
                                  pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(20)
        _wait_for_zygote(ours)
        binds, symlinks = host_binds(rootfs_dir=str(base / "rootfs"))
        yield Host(base, slots, base / "runtime", base / "rootfs", zygote, ours, binds, symlinks)
    finally:
        if ours is not None:
            ours.close()  # the zygote exits on EOF
        zygote_lingered = False
        if zygote is not None:
            try:
                zygote.wait(5)
            except subprocess.TimeoutExpired:
                zygote_lingered = True
                zygote.kill()
                zygote.wait()
        if shared:
            unmount_all_under(str(slots))
        shutil.rmtree(base, ignore_errors=True)
        assert not mounted_under(str(base)), "mounts left behind"
        assert not zygote_lingered, "the zygote did not exit when its socket closed"


def _wait_for_zygote(sock: socket.socket) -> None:
    """A spawn without fds: the zygote answers once its imports are done, so timings below are warm."""
    control.send_message(sock, {"op": "spawn", "spec": {}})
    reply, _ = control.recv_message(sock)
    assert reply["op"] == "spawned" and reply["pid"] == 0


@dataclass
class Sandbox:
    host: Host
    spec: control.SandboxSpec
    pid: int
    ctl: socket.socket
    invoke_path: str
    pidns: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slot(self) -> Path:
        return Path(self.spec.slot_dir)

    def request(self, message: dict[str, Any], reply_ops: set[str], timeout: float = 15) -> dict[str, Any]:
        control.send_message(self.ctl, message)
        return self.wait_for(reply_ops, timeout)

    def wait_for(self, ops: set[str], timeout: float = 15) -> dict[str, Any]:
        self.ctl.settimeout(timeout)
        while True:
            message, fds = control.recv_message(self.ctl)
            assert not fds
            if message["op"] in ops:
                return message
            self.events.append(message)

    def mount_task(self, code_dir: Path) -> None:
        target = str(self.slot / "task")
        sc.mount(str(code_dir), target, None, sc.MS_BIND)
        sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)

    def mount_runtime(self, name: str) -> None:
        target = str(self.slot / "runtime")
        sc.mount(str(self.host.runtime_dir / name), target, None, sc.MS_BIND)
        sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)

    def start(self, runtime: str, handler: str, **env: str) -> tuple[dict[str, Any], float]:
        config = self.host.runtime(runtime)
        full_env = {"EASYFAAS_HANDLER": handler, "_HANDLER": handler, "EASYFAAS_FUNCTION_NAME": "sbx-fn",
                    "EASYFAAS_TIMEOUT": "5", "EASYFAAS_MEMORY_SIZE": "128", **config["Env"], **env}
        began = time.monotonic()
        reply = self.request({"op": "start", "runtime": config, "env": full_env,
                              "function": {"name": "sbx-fn", "handler": handler}}, {"started"})
        return reply, (time.monotonic() - began) * 1000

    def invoke(self, event: Any = "{}", **fields: Any) -> dict[str, Any]:
        frame = {"id": "sbx-1", "event": event if isinstance(event, str) else json.dumps(event),
                 "deadline_ms": int(time.time() * 1000) + 10_000, "log": True, **fields}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(15)
            conn.connect(self.invoke_path)
            frames.send_frame(conn, frame)
            response = frames.recv_frame(conn)
        assert response is not None
        return response

    def processes(self) -> list[int]:
        return pids_in_pidns(self.pidns)


@pytest.fixture
def code_dirs(host: Host) -> Iterator[Any]:
    made: list[Path] = []

    def make(files: dict[str, str]) -> Path:
        path = host.base / f"code-{secrets.token_hex(4)}"
        path.mkdir()
        for name, text in files.items():
            target = path / name
            target.write_text(textwrap.dedent(text).lstrip())
            target.chmod(0o755)
        path.chmod(0o755)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spawn(host: Host) -> Iterator[Any]:
    """Spawns sandboxes through the zygote; kills them and removes everything afterwards."""
    made: list[tuple[Sandbox | None, Path, Path | None, socket.socket]] = []

    def do_spawn(cgroup: bool = True, **spec_fields: Any) -> tuple[Sandbox | None, dict[str, Any], float]:
        sid = f"sbx-{secrets.token_hex(3)}"
        slot = host.slots / sid
        for sub in ("root", "task", "runtime"):
            (slot / sub).mkdir(parents=True)
        cg_dir = None
        procs: list[str] = []
        if cgroup and MEMORY_CGROUP.is_dir():
            cg_dir = MEMORY_CGROUP / f"ef-test-{sid}"
            cg_dir.mkdir()
            procs = [str(cg_dir / "cgroup.procs")]
        fields_ = {"id": sid, "hostname": sid, "slot_dir": str(slot), "uid": UID, "gid": UID,
                   "cgroup_procs": procs, "binds": host.binds, "symlinks": host.symlinks,
                   "tmp_size": 8 << 20, **spec_fields}
        spec = control.SandboxSpec(**fields_)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        invoke_path = str(slot / "invoke.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(invoke_path)
        listener.listen(64)
        began = time.monotonic()
        control.send_message(host.zygote_sock, {"op": "spawn", "spec": spec.to_dict()},
                             [theirs.fileno(), listener.fileno()])
        spawned, _ = control.recv_message(host.zygote_sock)
        theirs.close()
        listener.close()
        assert spawned["op"] == "spawned" and spawned["pid"] > 0, spawned
        box = Sandbox(host, spec, spawned["pid"], ours, invoke_path)
        made.append((box, slot, cg_dir, ours))
        box.pidns = os.readlink(f"/proc/{box.pid}/ns/pid")
        first = box.wait_for({"ready", "failed"})
        return box, first, (time.monotonic() - began) * 1000

    yield do_spawn
    for box, slot, cg_dir, ours in made:
        if box is not None:
            try:
                os.kill(box.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_until(lambda: not box.processes(), what="sandbox processes to exit")
        ours.close()
        unmount_all_under(str(slot))
        shutil.rmtree(slot, ignore_errors=True)
        if cg_dir is not None:
            wait_until(lambda: _rmdir(cg_dir), what=f"cgroup {cg_dir} removal")


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


# ---- processes in network namespaces of their own ---------------------------------------------


@contextmanager
def sandbox_process() -> Iterator[int]:
    """A child in its own network namespace that sleeps until told (or killed)."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(stop_w)
            sc.unshare(sc.CLONE_NEWNET)
            os.write(ready_w, b"R")
            os.read(stop_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(stop_r)
    try:
        assert os.read(ready_r, 1) == b"R"
        yield pid
    finally:
        os.close(stop_w)
        os.close(ready_r)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


@contextmanager
def socket_in_netns(pid: int, kind: int = socket.SOCK_DGRAM) -> Iterator[socket.socket]:
    """A socket created inside the netns of ``pid`` (it stays there after we setns back)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        sc.setns(target, sc.CLONE_NEWNET)
        try:
            sock = socket.socket(socket.AF_INET, kind)
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)
    with sock:
        yield sock


@contextmanager
def netns_iproute(pid: int) -> Iterator[IPRoute]:
    """pyroute2's ``IPRoute`` on a netlink socket inside the netns of ``pid``: a view of the sandbox's
    network independent of the funclet's own netlink client."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        sc.setns(target, sc.CLONE_NEWNET)
        try:
            ipr = IPRoute(groups=0)
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)
    with ipr:
        yield ipr


def udp_probe(sender: socket.socket, receiver: socket.socket, dst: str, timeout: float = 0.5) -> bool:
    """Send one UDP datagram to ``dst`` at the receiver's port; True if it arrived."""
    port = receiver.getsockname()[1]
    token = secrets.token_bytes(8)
    receiver.settimeout(timeout)
    sender.sendto(token, (dst, port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data, _ = receiver.recvfrom(64)
        except (socket.timeout, BlockingIOError):
            return False
        if data == token:
            return True
    return False
