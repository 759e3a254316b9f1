"""In-process fakes of what the funclet's sandbox pool drives: the zygote and its runners, cgroups,
code images, the network and mounts (the interfaces in ``funclet/pool/kernel.py``).

The runner fake speaks the real control protocol (``runner/control.py``) on the real socketpair the
pool makes, so the pool's own ``RunnerLink`` is exercised as it is in production; the test decides
what the runner answers and when it reports an exit, goes silent or dies. Nothing here needs root
or makes a kernel object.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Collection

from funclet.runner_link import LinkClosed
from runner import control
from runner.control import Op, SandboxSpec


# ---- the zygote and its runners -------------------------------------------------------------------

class FakeRunner:
    """A sandbox's runner: answers the funclet's commands as the test configures it to."""

    def __init__(self, spec: SandboxSpec, sock: socket.socket, pid: int, *, ready: bool = True) -> None:
        self.spec = spec
        self.pid = pid
        self.sock = sock
        sock.setblocking(False)
        self.commands: list[dict[str, Any]] = []
        self.runtime_pid = 0
        self.standby_pid = 0
        self.silent = False            # stops answering (a hung runner)
        self.init_error: dict[str, Any] | None = None   # what the next start reports
        self.refuse_prestart = ""      # the error of the next prestarts
        self.fail_reset = False        # closes the socket instead of answering a reset
        self._standby_name = ""
        self._pids = itertools.count(pid * 100 + 2)
        self._task = asyncio.get_running_loop().create_task(self._serve(ready))

    @property
    def ops(self) -> list[str]:
        return [str(c["op"]) for c in self.commands]

    async def _serve(self, ready: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            if not ready:
                await self._send({"op": Op.FAILED, "error": "mount /proc: EPERM"})
                return  # a runner whose sandbox could not be built exits
            await self._send({"op": Op.READY})
            while True:
                data = await loop.sock_recv(self.sock, control.MAX_DATAGRAM)
                if not data:
                    return
                message = control.decode_message(data)
                self.commands.append(message)
                if not self.silent:
                    await self._answer(message)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.sock.close()

    async def _answer(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == Op.START:
            if self.standby_pid and message["runtime"].get("Name") == self._standby_name:
                self.runtime_pid, self.standby_pid = self.standby_pid, 0
            else:
                self.standby_pid = 0
                self.runtime_pid = next(self._pids)
            reply: dict[str, Any] = {"op": Op.STARTED, "ok": self.init_error is None, "pid": self.runtime_pid}
            if self.init_error is not None:
                reply["error"] = self.init_error
            await self._send(reply)
        elif op == Op.RESET:
            if self.fail_reset:
                self.sock.close()
                return
            self.runtime_pid = self.standby_pid = 0
            await self._send({"op": Op.RESET_DONE})
        elif op == Op.PING:
            await self._send({"op": Op.PONG, "runtime_pid": self.runtime_pid or self.standby_pid,
                              "standby": bool(self.standby_pid), "spare": False})
        elif op == Op.PRESTART:
            if self.refuse_prestart:
                await self._send({"op": Op.PRESTARTED, "ok": False, "pid": 0, "error": self.refuse_prestart})
                return
            self.standby_pid = next(self._pids)
            self._standby_name = message["runtime"].get("Name")
            await self._send({"op": Op.PRESTARTED, "ok": True, "pid": self.standby_pid})
        else:
            await self._send({"op": Op.ERROR, "error": f"unknown op {op!r}"})

    async def _send(self, message: dict[str, Any]) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, control.encode_message(message))

    # -- what the test makes happen --

    async def runtime_exits(self, code: int | None = 0, signal: int | None = None, output: str = "") -> None:
        pid, self.runtime_pid = self.runtime_pid, 0
        await self._send({"op": Op.EXITED, "pid": pid, "code": code, "signal": signal, "output": output})

    async def standby_exits(self, signal: int = 9) -> None:
        pid, self.standby_pid = self.standby_pid, 0
        await self._send({"op": Op.EXITED, "pid": pid, "code": None, "signal": signal, "standby": True})

    def dies(self) -> None:
        """The runner is gone: its control socket closes."""
        self._task.cancel()

    @property
    def gone(self) -> bool:
        return self._task.done()


class FakeZygote:
    """Spawns a :class:`FakeRunner` per sandbox; ``runners`` has the latest one of each sandbox id."""

    def __init__(self) -> None:
        self.started = False
        self.runners: dict[str, FakeRunner] = {}
        self.spawned: list[SandboxSpec] = []
        self.killed: list[int] = []
        self.fail_spawns = 0           # refuse this many spawns (a zygote that cannot fork)
        self.failed_inits = 0          # this many runners report "failed" instead of "ready"
        self._pids = itertools.count(1000)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False
        for runner in self.runners.values():
            runner.dies()
        await asyncio.sleep(0)

    async def spawn(self, spec: SandboxSpec, fds: list[int]) -> int:
        assert self.started and len(fds) == 2
        self.spawned.append(spec)
        if self.fail_spawns:
            self.fail_spawns -= 1
            raise LinkClosed("zygote could not spawn a sandbox: cannot fork")
        ready = not self.failed_inits
        if self.failed_inits:
            self.failed_inits -= 1
        pid = next(self._pids)
        # The pool closes its copies of the fds once spawn returns, as the real zygote's are its own.
        sock = socket.socket(fileno=os.dup(fds[0]))
        self.runners[spec.id] = FakeRunner(spec, sock, pid, ready=ready)
        return pid

    def kill(self, pid: int) -> None:
        self.killed.append(pid)
        for runner in self.runners.values():
            if runner.pid == pid:
                runner.dies()


# ---- kernel parts ---------------------------------------------------------------------------------

@dataclass
class FakeCgroup:
    name: str
    memory_limit: int = 0
    cpu_limit: int = 0
    pids_limit: int = 0
    oom: int = 0
    removed: bool = False

    @property
    def procs_files(self) -> list[str]:
        return [f"/fake/cgroup/{self.name}/cgroup.procs"]

    def set_memory_limit(self, nbytes: int) -> None:
        self.memory_limit = nbytes

    def set_cpu_limit(self, millicpus: int) -> None:
        self.cpu_limit = millicpus

    def set_pids_limit(self, n: int) -> None:
        self.pids_limit = n

    def memory_usage(self) -> int:
        return 1 << 20

    def memory_peak(self) -> int:
        return 2 << 20

    def oom_kills(self) -> int:
        return self.oom

    def cpu_usage_ns(self) -> int:
        return 1000

    def remove(self) -> None:
        self.removed = True


class FakeCgroups:
    def __init__(self) -> None:
        self.created: list[FakeCgroup] = []

    def create(self, name: str) -> FakeCgroup:
        cg = FakeCgroup(name)
        self.created.append(cg)
        return cg

    def live(self) -> list[FakeCgroup]:
        return [cg for cg in self.created if not cg.removed]

    def cleanup(self, group_prefix: str) -> int:
        return 0


@dataclass(frozen=True)
class FakeImage:
    code_hash: str
    mountpoint: Path
    size: int = 4096


class FakeImages:
    """Code images: "built" on first ensure (the code loader is not called), LRU-trimmed."""

    def __init__(self, root: Path, max_images: int = 256) -> None:
        self.root = root
        self.max_images = max_images
        self._images: dict[str, FakeImage] = {}
        self.builds = 0
        self.closed = False

    async def ensure(self, code_hash: str, load_zip: Callable[[], Awaitable[bytes]]) -> FakeImage:
        image = self._images.pop(code_hash, None)
        if image is None:
            self.builds += 1
            image = FakeImage(code_hash, self.root / code_hash)
        self._images[code_hash] = image  # most recently used last
        return image

    def is_built(self, code_hash: str) -> bool:
        return code_hash in self._images

    def images(self) -> list[FakeImage]:
        return list(self._images.values())

    async def trim(self, in_use: Collection[str]) -> list[str]:
        evicted = []
        for code_hash in list(self._images):
            if len(self._images) <= self.max_images:
                break
            if code_hash not in in_use:
                del self._images[code_hash]
                evicted.append(code_hash)
        return evicted

    def cleanup_stale(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class FakeNic:
    host_ifname: str
    address: str


class FakeNetwork:
    def __init__(self) -> None:
        self.attached: dict[str, FakeNic] = {}
        self.egress: dict[str, Any] = {}  # host ifname -> the EgressPolicy in force
        self.set_up = False

    def setup(self) -> None:
        self.set_up = True

    def cleanup_stale(self) -> int:
        return 0

    def attach(self, pid: int, slot_index: int) -> FakeNic:
        nic = FakeNic(f"efv{slot_index}", f"172.33.0.{slot_index + 2}")
        self.attached[nic.host_ifname] = nic
        return nic

    def detach(self, nic: FakeNic) -> None:
        del self.attached[nic.host_ifname]
        self.egress.pop(nic.host_ifname, None)

    def set_egress(self, nic: FakeNic, policy: Any) -> None:
        self.egress[nic.host_ifname] = policy

    def clear_egress(self, nic: FakeNic) -> None:
        self.egress.pop(nic.host_ifname, None)

    def teardown(self) -> None:
        self.set_up = False

    def close(self) -> None:
        pass


@dataclass
class FakeMounts:
    """Bind mounts as a table: mountpoint → source."""

    table: dict[str, str] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)

    def make_shared_dir(self, path: str | os.PathLike[str]) -> None:
        self.shared.append(os.fspath(path))

    def bind(self, src: str | os.PathLike[str], dst: str | os.PathLike[str], readonly: bool = True) -> None:
        assert readonly, "slot binds are read-only"
        self.table[os.fspath(dst)] = os.fspath(src)

    def unmount(self, path: str | os.PathLike[str]) -> bool:
        return self.table.pop(os.fspath(path), None) is not None

    def unmount_under(self, prefix: str | os.PathLike[str]) -> int:
        root = os.fspath(prefix).rstrip("/") + "/"
        gone = [p for p in self.table if p.startswith(root)]
        for p in gone:
            del self.table[p]
        return len(gone)
