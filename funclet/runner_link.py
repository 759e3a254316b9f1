"""The funclet's side of the control sockets: to the zygote (spawn) and to each sandbox's runner.

Both are SOCK_SEQPACKET sockets carrying one JSON object per datagram (format defined in
``runner/control.py``). A link allows one command in flight at a time; unprompted messages from a
runner (``exited``) go to a callback, and the socket's EOF means the sandbox is gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Collection

import structlog

from runner import control
from runner.control import Op, SandboxSpec, zygote_command

log = structlog.get_logger(__name__)


class LinkClosed(Exception):
    """The process at the other end of a control socket is gone."""


class RunnerLink:
    """Commands to one sandbox's runner (PID 1 inside the sandbox)."""

    def __init__(self, sock: socket.socket, *, on_message: Callable[[dict[str, Any]], None],
                 on_close: Callable[[], None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._on_message = on_message
        self._on_close = on_close
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[dict[str, Any]] | None = None
        self._expect: set[str] = set()
        self.closed = False
        # Unix time of the runner's last datagram: its liveness, for health checks.
        self.last_heard = time.time()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self._sock, control.MAX_DATAGRAM)
                if not data:
                    break
                self.last_heard = time.time()
                try:
                    message = control.decode_message(data)
                except ValueError:
                    log.warning("runner_bad_message", size=len(data))
                    continue
                waiter = self._waiter
                if waiter is not None and not waiter.done() and message.get("op") in self._expect:
                    waiter.set_result(message)
                else:
                    self._on_message(message)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.closed = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(LinkClosed("runner closed its control socket"))
            self._on_close()

    async def request(self, message: dict[str, Any], reply_ops: Collection[str], timeout: float) -> dict[str, Any]:
        """Send one command and wait for the runner's reply, a message whose op is in ``reply_ops``."""
        async with self._lock:
            if self.closed:
                raise LinkClosed("runner is gone")
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiter = waiter
            self._expect = set(reply_ops)
            try:
                try:
                    await loop.sock_sendall(self._sock, control.encode_message(message))
                except OSError as exc:
                    raise LinkClosed(f"runner is gone: {exc}") from None
                return await asyncio.wait_for(waiter, timeout)
            finally:
                self._waiter = None
                self._expect = set()

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass
        self._sock.close()


class Zygote:
    """The stdlib-only process that forks sandbox inits (runners) for the funclet.

    If it dies (killed, say), every sandbox it forked dies with it (their parent-death signal) and
    the next spawn starts a new one, so the funclet's rebuilds recover the pool by themselves.
    """

    def __init__(self, python: str, repo_root: Path, *, pod_name: str = "") -> None:
        self._python = python
        self._repo_root = repo_root
        self._pod_name = pod_name
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = zygote_command(self._python, str(self._repo_root), child.fileno())
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "NODE_")) and k != "LD_PRELOAD"}
        # Tells this pod's zygote and runners apart from other pods' on the same host (audits, ps).
        env["EASYFAAS_POD"] = self._pod_name
        # Popen (not asyncio's) so the child is not tied to the loop's child watcher; the zygote
        # dies with us through PR_SET_PDEATHSIG and we reap it in stop().
        self._proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                      close_fds=True)
        child.close()
        parent.setblocking(False)
        self._sock = parent
        log.info("zygote_started", pid=self._proc.pid)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._sock is not None

    async def spawn(self, spec: SandboxSpec, fds: list[int], timeout: float = 10.0) -> int:
        """Fork a sandbox's runner on ``fds`` (its control socket, its invoke listener); its host pid."""
        if self._sock is None and self._proc is None:
            raise LinkClosed("zygote not started")
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self.alive:
                await self._restart()
            assert self._sock is not None
            payload = control.encode_message({"op": Op.SPAWN, "spec": spec.to_dict()})
            try:
                await loop.run_in_executor(None, _send_with_fds, self._sock, payload, fds)
                data = await asyncio.wait_for(loop.sock_recv(self._sock, control.MAX_DATAGRAM), timeout)
            except OSError as exc:
                data = b""
                log.warning("zygote_unreachable", error=str(exc))
            if not data:
                self._drop_socket()
                raise LinkClosed("zygote exited")
        reply = control.decode_message(data)
        if reply.get("op") != Op.SPAWNED or not reply.get("pid"):
            raise LinkClosed(f"zygote could not spawn a sandbox: {reply.get('error', reply)}")
        return int(reply["pid"])

    @staticmethod
    def kill(pid: int) -> None:
        """Kill a sandbox's runner: the kernel then kills everything in its pid namespace."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _restart(self) -> None:
        old = self._proc
        log.warning("zygote_restarting", old_pid=old.pid if old else 0,
                    status=old.poll() if old else None)
        self._drop_socket()
        if old is not None:
            if old.poll() is None:
                old.kill()
            await asyncio.to_thread(old.wait)
            self._proc = None
        await self.start()

    async def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            proc = self._proc
            self._proc = None
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 3)
            except asyncio.TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)


def _send_with_fds(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    # The socket is non-blocking for the loop's reads; a spawn datagram is small, so a send only
    # fails here if the zygote stopped reading, which the caller reports as a failed spawn.
    socket.send_fds(sock, [payload], fds)
