"""Building and destroying sandboxes: kernel objects, the runner, reset, rebuild, and the runner's reports.

A sandbox is built off the request path: a cgroup, a zygote fork into fresh namespaces (the runner,
PID 1 inside), its invoke socket, a veth. Reset takes the function's egress away, kills every
process of the sandbox but its runner, refreshes ``/tmp`` and unbinds the code, so a sandbox
serves many functions over its life without rebuilding its network; a sandbox whose reset fails
is rebuilt. A runner whose control socket closes gets its sandbox rebuilt in the background
(``defunct``); a runtime's exit (with the cgroup's OOM count) is recorded and emitted as ``exited``.

Every ``*_locked`` method expects the caller to hold the sandbox's lock.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import structlog

from easyfaas.models import FuncletEventType, RuntimeExit, SandboxState
from funclet.pool.kernel import Cgroups, Network, Spawner
from funclet.pool.records import Sandbox
from funclet.pool.registry import Registry
from funclet.pool.settings import MiB
from funclet.pool.slots import SLOT_SUBDIRS, Slots
from funclet.pool.standby import StandbyKeeper
from funclet.runner_link import LinkClosed, RunnerLink
from runner.control import Op, SandboxSpec

log = structlog.get_logger(__name__)

HostBinds = tuple[list[dict[str, str]], dict[str, str]]


class Lifecycle:
    def __init__(self, registry: Registry, slots: Slots, standby: StandbyKeeper, *, cgroups: Cgroups,
                 network: Network | None, zygote: Spawner, host_binds: HostBinds) -> None:
        self._registry = registry
        self._slots = slots
        self._standby = standby
        self._settings = registry.settings
        self.cgroups = cgroups
        self.network = network
        self.zygote = zygote
        self._binds, self._symlinks = host_binds
        # The network setns()es this thread into sandbox netns to open netlink sockets there: one
        # thread, never the loop's
        self._net_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="funclet-net")

    async def net(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a call of the network on its own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._net_executor, fn, *args)

    def close_net(self) -> None:
        self._net_executor.shutdown(wait=True)

    # -- build and destroy --

    async def build(self, sb: Sandbox) -> None:
        """Create the sandbox's kernel objects and start its runner; on failure leave it DEAD."""
        s = self._settings
        reg = self._registry
        reg.set_state(sb, SandboxState.STARTING)
        sb.current_event = "event_init"
        sb.identity = ""
        sb.function_brn = ""
        sb.memory_limit = s.runner_memory
        listener: socket.socket | None = None
        theirs: socket.socket | None = None
        try:
            for sub in SLOT_SUBDIRS:
                (sb.slot_dir / sub).mkdir(parents=True, exist_ok=True)
            sb.invoke_socket.parent.mkdir(parents=True, exist_ok=True)
            sb.cgroup = self.cgroups.create(f"{s.cgroup_group}/{sb.id}")
            sb.cgroup.set_memory_limit(s.runner_memory)
            sb.cgroup.set_cpu_limit(s.runner_millicpus)
            sb.cgroup.set_pids_limit(s.runner_pids)
            sb.oom_base = sb.oom_seen = sb.cgroup.oom_kills()
            sb.invoke_socket.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(sb.invoke_socket))
            os.chmod(sb.invoke_socket, 0o600)
            listener.listen(512)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sb.ready = asyncio.get_running_loop().create_future()
            sb.link = RunnerLink(ours, on_message=lambda m, sb=sb: self._on_runner_message(sb, m),
                                 on_close=lambda sb=sb: self._on_runner_gone(sb))
            spec = SandboxSpec(id=sb.id, hostname=sb.id, slot_dir=str(sb.slot_dir), uid=sb.uid, gid=sb.uid,
                               cgroup_procs=sb.cgroup.procs_files, binds=[*self._binds, *_secrets_bind(sb)],
                               symlinks=self._symlinks,
                               tmp_size=s.tmp_size)
            sb.pid = await self.zygote.spawn(spec, [theirs.fileno(), listener.fileno()])
            theirs.close()
            theirs = None
            listener.close()
            listener = None
            message = await asyncio.wait_for(sb.ready, s.runner_timeout)
            if message.get("op") != Op.READY:
                raise RuntimeError(f"sandbox init failed: {message.get('error', message)}")
            if self.network is not None:
                sb.nic = await self.net(self.network.attach, sb.pid, sb.index)
            sb.epoch = reg.next_epoch()
            sb.current_event = ""
            reg.set_state(sb, SandboxState.COLD, "built")
            log.info("sandbox_built", container=sb.id, pid=sb.pid,
                     address=sb.nic.address if sb.nic else None)
            self._standby.want()
        except BaseException as exc:
            if listener is not None:
                listener.close()
            if theirs is not None:
                theirs.close()
            log.error("sandbox_build_failed", container=sb.id, error=str(exc) or type(exc).__name__)
            await self.destroy(sb)
            raise

    async def destroy(self, sb: Sandbox, state: SandboxState = SandboxState.DEAD) -> None:
        self._registry.set_state(sb, state)
        sb.current_event = "event_reset"
        link, sb.link = sb.link, None
        if sb.pid:
            self.zygote.kill(sb.pid)
        if link is not None:
            await link.close()
        if sb.cgroup is not None:
            cg, sb.cgroup = sb.cgroup, None
            try:
                await asyncio.to_thread(cg.remove)
            except OSError as exc:
                log.warning("cgroup_remove_failed", container=sb.id, error=str(exc))
        self._slots.unbind(sb)
        if sb.nic is not None and self.network is not None:
            nic, sb.nic = sb.nic, None
            await self.net(self.network.detach, nic)  # its firewall rules, egress included, go too
        sb.egress = False
        sb.invoke_socket.unlink(missing_ok=True)
        sb.pid = 0
        sb.standby = ""
        sb.forget_function()

    async def remove_locked(self, sb: Sandbox, reason: str) -> None:
        """Destroy a sandbox for good: its kernel objects, its directories, its entry in the pool."""
        await self.destroy(sb, SandboxState.REMOVING)
        for path in (*(sb.slot_dir / sub for sub in SLOT_SUBDIRS), sb.slot_dir, sb.invoke_socket.parent):
            try:
                path.rmdir()
            except OSError:
                pass  # still a mountpoint of a dying namespace, or not empty: harmless, reused later
        self._registry.discard(sb, reason)

    async def grow_one(self, sb: Sandbox) -> None:
        async with sb.lock:
            try:
                await self.build(sb)
            except BaseException:
                # A sandbox the pool grew by is not worth retrying: forget it entirely.
                if self._registry.holds(sb):
                    await self.remove_locked(sb, "build failed")
                raise

    # -- reset and rebuild --

    async def reset_locked(self, sb: Sandbox) -> None:
        """Back to COLD without rebuilding; a runner that fails to reset gets its sandbox rebuilt."""
        if sb.state in (SandboxState.DEAD, SandboxState.STARTING) or sb.link is None:
            await self.rebuild_locked(sb)
            return
        reg = self._registry
        sb.current_event = "event_reset"
        reg.set_state(sb, SandboxState.RESETTING)
        try:
            if sb.egress and sb.nic is not None and self.network is not None:
                # First: whatever of the function is still running loses its way out now.
                await self.net(self.network.clear_egress, sb.nic)
                sb.egress = False
            sb.standby = ""
            await sb.link.request({"op": Op.RESET}, {Op.RESET_DONE}, self._settings.runner_timeout)
            self._slots.unbind(sb)
            assert sb.cgroup is not None
            sb.memory_limit = self._settings.runner_memory
            sb.cgroup.set_memory_limit(sb.memory_limit)
        except (LinkClosed, asyncio.TimeoutError, OSError, AssertionError) as exc:
            log.warning("reset_failed", container=sb.id, error=str(exc) or type(exc).__name__)
            await self.rebuild_locked(sb)
            return
        sb.forget_function()
        sb.epoch = reg.next_epoch()
        sb.current_event = ""
        reg.set_state(sb, SandboxState.COLD, "reset")
        log.info("sandbox_reset", container=sb.id)
        self._standby.want()

    async def rebuild_locked(self, sb: Sandbox) -> None:
        await self.destroy(sb)
        if self._registry.closing:
            return
        try:
            await self.build(sb)
        except Exception as exc:  # noqa: BLE001 - the sandbox stays DEAD and is retried later
            log.error("sandbox_rebuild_failed", container=sb.id, error=str(exc))
            self._registry.spawn_task(self.retry_build(sb))

    async def retry_build(self, sb: Sandbox) -> None:
        """Rebuild a DEAD sandbox, backing off from 1 s to 30 s between attempts."""
        delay = 1.0
        reg = self._registry
        while not reg.closing and reg.holds(sb):
            await asyncio.sleep(delay)
            async with sb.lock:
                if sb.state is not SandboxState.DEAD or not reg.holds(sb):
                    return
                try:
                    await self.build(sb)
                    return
                except Exception:  # noqa: BLE001
                    delay = min(delay * 2, 30.0)

    async def heal_locked(self, sb: Sandbox, reason: str) -> None:
        """Rebuild a sandbox whose runner is gone or silent, and say so (``defunct``)."""
        self._registry.emit(FuncletEventType.DEFUNCT, sb, reason=reason)
        await self.rebuild_locked(sb)

    # -- what the runner reports --

    def _on_runner_message(self, sb: Sandbox, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in (Op.READY, Op.FAILED):
            if sb.ready is not None and not sb.ready.done():
                sb.ready.set_result(message)
            return
        if op == Op.EXITED and message.get("standby"):
            self._standby.exited(sb, message)
            return
        if op == Op.EXITED:
            self._runtime_exited(sb, message)
            return
        log.debug("runner_message", container=sb.id, op=op)

    def _runtime_exited(self, sb: Sandbox, message: dict[str, Any]) -> None:
        oom = False
        if sb.cgroup is not None:
            try:
                kills = sb.cgroup.oom_kills()
                oom = kills > sb.oom_base
                if oom:
                    self._registry.counters["oom_kill"] += 1
                sb.oom_seen = max(sb.oom_seen, kills)
            except OSError:
                pass
        code, sig = message.get("code"), message.get("signal")
        output = str(message.get("output") or "")[-2000:]
        sb.last_exit = RuntimeExit(Epoch=sb.epoch, Code=code if isinstance(code, int) else None,
                                   Signal=sig if isinstance(sig, int) else None, OOMKilled=oom,
                                   MemoryLimit=sb.memory_limit, Output=output, Time=time.time())
        sb.runtime_pid = 0
        log.info("runtime_exited", container=sb.id, function=sb.function_brn, code=code, signal=sig, oom=oom,
                 memory_limit_mb=sb.memory_limit // MiB, epoch=sb.epoch, output=output[-1000:])
        self._registry.emit(FuncletEventType.EXITED, sb, exit=sb.last_exit)
        if sb.state is SandboxState.WARM:
            self._registry.set_state(sb, SandboxState.STOPPED, "runtime exited")

    def _on_runner_gone(self, sb: Sandbox) -> None:
        if sb.ready is not None and not sb.ready.done():
            sb.ready.set_result({"op": Op.FAILED, "error": "the sandbox init exited before it was ready"})
        if self._registry.closing or sb.state in (SandboxState.DEAD, SandboxState.STARTING, SandboxState.REMOVING):
            return
        log.warning("runner_gone", container=sb.id, state=sb.state.value)
        self._registry.spawn_task(self._heal(sb, "runner gone"))

    async def _heal(self, sb: Sandbox, reason: str) -> None:
        async with sb.lock:
            if not self._registry.holds(sb) or (sb.link is not None and not sb.link.closed):
                return
            await self.heal_locked(sb, reason)


def _secrets_bind(sb: Sandbox) -> list[dict[str, str]]:
    """The slot's secrets directory on the sandbox's /var/secrets (funclet/sandbox/secretfs.py)."""
    return [{"src": str(sb.slot_dir / "secrets"), "dst": "/var/secrets"}]
