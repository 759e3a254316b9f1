"""The funclet's pool of sandboxes: build, warm, reset, rebuild and tear down.

A sandbox is built off the request path (cgroup, zygote fork into fresh namespaces, read-only root,
veth). Warmup — the only step a request waits for — is: code image (built once per code hash),
two bind mounts that propagate into the sandbox, a memory limit, and the runner's start command.
Reset kills every process of the sandbox but its runner, refreshes /tmp and unmounts the code, so
a sandbox serves many functions over its life without ever rebuilding its network. A sandbox whose
runner stops answering is destroyed and rebuilt in the background.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from easyfaas.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound, ServiceError
from easyfaas.models import (ContainerInfo, FunctionConfiguration, NodeResource, Resource, ResourceStats,
                             RuntimeConfiguration, WarmupRequest, WarmupResponse)
from funclet.code_source import load_code
from funclet.runner_link import LinkClosed, RunnerLink, Zygote
from funclet.sandbox import mounts
from funclet.sandbox.cgroup import CgroupDriver, SandboxCgroup
from funclet.sandbox.codeimage import CodeImageStore
from funclet.sandbox.network import BridgeNetwork, SandboxNic

log = structlog.get_logger(__name__)

MiB = 1 << 20


class SandboxState(str, enum.Enum):
    STARTING = "starting"
    COLD = "cold"
    WARMUP = "warmup"
    WARM = "warm"
    STOPPED = "stopped"      # its runtime exited; needs a cooldown before reuse
    RESETTING = "resetting"
    DEAD = "dead"            # being destroyed or rebuilt


@dataclass
class PoolSettings:
    pod_name: str
    container_num: int
    state_dir: Path
    run_dir: Path
    runtime_path: Path
    rootfs_path: Path
    runner_memory: int
    runner_millicpus: int
    runner_pids: int
    tmp_size: int
    uid_base: int
    warmup_timeout: float
    runner_timeout: float
    max_code_size: int
    capacity_memory: int
    capacity_millicpus: int
    reserved_memory: int
    reserved_millicpus: int

    @property
    def slots_dir(self) -> Path:
        return self.state_dir / "slots"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def sockets_dir(self) -> Path:
        return self.run_dir / "slots"

    @property
    def cgroup_group(self) -> str:
        return f"easyfaas-{self.pod_name}"


@dataclass
class Sandbox:
    index: int
    id: str
    slot_dir: Path
    invoke_socket: Path
    uid: int
    state: SandboxState = SandboxState.STARTING
    pid: int = 0
    cgroup: SandboxCgroup | None = None
    link: RunnerLink | None = None
    nic: SandboxNic | None = None
    identity: str = ""
    current_event: str = "event_init"
    memory_limit: int = 0
    oom_base: int = 0
    runtime_pid: int = 0
    last_exit: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Future[dict[str, Any]] | None = None


class SandboxPool:
    def __init__(self, settings: PoolSettings, *, cgroups: CgroupDriver, images: CodeImageStore,
                 network: BridgeNetwork | None, zygote: Zygote,
                 host_binds: tuple[list[dict[str, str]], dict[str, str]]) -> None:
        self.settings = settings
        self._cgroups = cgroups
        self._images = images
        self._network = network
        self._zygote = zygote
        self._binds, self._symlinks = host_binds
        self._sandboxes: dict[str, Sandbox] = {}
        # pyroute2 sockets opened inside sandbox netns must only be used from this one thread
        self._net_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="funclet-net")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.cleanup_leftovers()
        for d in (s.slots_dir, s.images_dir, s.sockets_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(s.sockets_dir, 0o700)
        mounts.make_shared_dir(str(s.slots_dir))
        if self._network is not None:
            await self._net(self._network.setup)
        await self._zygote.start()
        for i in range(s.container_num):
            sb = self._new_sandbox(i)
            self._sandboxes[sb.id] = sb
        results = await asyncio.gather(*(self._build(sb) for sb in self._sandboxes.values()),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and len(failed) == len(results):
            raise RuntimeError(f"no sandbox could be built: {failed[0]}")
        log.info("pool_started", sandboxes=len(results) - len(failed), failed=len(failed))

    async def cleanup_leftovers(self) -> None:
        """Remove what a crashed predecessor left: mounts, loop devices, cgroups, veths, sockets."""
        s = self.settings
        removed_mounts = mounts.unmount_under(str(s.slots_dir)) if s.slots_dir.exists() else 0
        self._images.cleanup_stale()
        removed_groups = self._cgroups.cleanup(s.cgroup_group)
        removed_links = await self._net(self._network.cleanup_stale) if self._network else 0
        if s.sockets_dir.exists():
            for p in s.sockets_dir.glob("*/invoke.sock"):
                p.unlink(missing_ok=True)
        if removed_mounts or removed_groups or removed_links:
            log.info("leftovers_removed", mounts=removed_mounts, cgroups=removed_groups, veths=removed_links)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._destroy(sb) for sb in self._sandboxes.values()), return_exceptions=True)
        await self._zygote.stop()
        await self._images.close()
        s = self.settings
        mounts.unmount_under(str(s.slots_dir))
        await asyncio.to_thread(self._cgroups.cleanup, s.cgroup_group)
        if self._network is not None:
            await self._net(self._network.teardown)
            await self._net(self._network.close)
        self._net_executor.shutdown(wait=True)
        log.info("pool_closed")

    # ---- API operations ------------------------------------------------------------------------

    def get(self, container_id: str) -> Sandbox:
        try:
            return self._sandboxes[container_id]
        except KeyError:
            raise ResourceNotFound(f"container {container_id} does not exist") from None

    def list(self, ids: list[str] | None = None) -> list[ContainerInfo]:
        sandboxes = self._sandboxes.values() if not ids else [self.get(i) for i in ids]
        return [self.info(sb) for sb in sandboxes]

    def node(self) -> NodeResource:
        s = self.settings
        capacity = Resource(MilliCPUs=s.capacity_millicpus, Memory=s.capacity_memory)
        reserved = Resource(MilliCPUs=s.reserved_millicpus, Memory=s.reserved_memory)
        allocatable = Resource(MilliCPUs=max(0, capacity.MilliCPUs - reserved.MilliCPUs),
                               Memory=max(0, capacity.Memory - reserved.Memory))
        return NodeResource(BaseMemory=s.runner_memory,
                            Default=Resource(MilliCPUs=s.runner_millicpus, Memory=s.runner_memory),
                            Capacity=capacity, Reserved=reserved, Allocatable=allocatable)

    def info(self, sb: Sandbox, *, stats: bool = False) -> ContainerInfo:
        oom = 0
        resource_stats = None
        if sb.cgroup is not None:
            try:
                oom = sb.cgroup.oom_kills()
                if stats:
                    resource_stats = ResourceStats(MemoryUsage=sb.cgroup.memory_usage(),
                                                   MemoryLimit=sb.memory_limit,
                                                   MemoryPeak=sb.cgroup.memory_peak(),
                                                   CPUUsageNanos=sb.cgroup.cpu_usage_ns(), OOMKills=oom)
            except OSError:
                pass
        return ContainerInfo(Hostname=sb.id, ContainerID=sb.id, HostPid=sb.pid, CurrentEvent=sb.current_event,
                             Resource=Resource(MilliCPUs=self.settings.runner_millicpus, Memory=sb.memory_limit),
                             ResourceStats=resource_stats, State=sb.state.value,
                             InvokeSocket=str(sb.invoke_socket), Identity=sb.identity, OOMKills=oom)

    async def warmup(self, req: WarmupRequest) -> WarmupResponse:
        sb = self.get(req.ContainerID)
        cfg = req.Configuration
        code_hash = _code_hash_hex(cfg.CodeSha256)
        runtime = req.RuntimeConfiguration
        runtime_dir = self._runtime_dir(runtime)
        if not (1 <= cfg.MemorySize <= 1 << 20):
            raise InvalidParameterValue(f"MemorySize {cfg.MemorySize} MB is out of range")
        async with sb.lock:
            if sb.state is not SandboxState.COLD:
                raise ResourceConflict(f"container {sb.id} is {sb.state.value}, not cold")
            sb.state = SandboxState.WARMUP
            sb.current_event = "event_warmup"
            started = time.monotonic()
            try:
                image = await asyncio.wait_for(
                    self._images.ensure(code_hash, lambda: load_code(req.Code, max_size=self.settings.max_code_size)),
                    self.settings.warmup_timeout)
                mounts.bind(str(image.mountpoint), str(sb.slot_dir / "task"), readonly=True)
                mounts.bind(str(runtime_dir), str(sb.slot_dir / "runtime"), readonly=True)
                assert sb.cgroup is not None and sb.link is not None
                sb.memory_limit = cfg.MemorySize * MiB
                sb.cgroup.set_memory_limit(sb.memory_limit)
                sb.oom_base = sb.cgroup.oom_kills()
                sb.last_exit = None
                reply = await sb.link.request(
                    {"op": "start", "runtime": runtime.to_dict(), "env": runtime_env(cfg, runtime),
                     "function": {"name": cfg.FunctionName, "version": cfg.Version, "brn": cfg.FunctionArn,
                                  "handler": cfg.Handler, "memory": cfg.MemorySize, "timeout": cfg.Timeout}},
                    {"started"}, self.settings.warmup_timeout)
            except BaseException as exc:
                log.warning("warmup_failed", container=sb.id, error=str(exc) or type(exc).__name__)
                await self._reset_locked(sb)
                if isinstance(exc, (asyncio.TimeoutError, LinkClosed)):
                    raise ServiceError(f"warm up container {sb.id} failed: {exc or 'timed out'}") from None
                raise
            sb.identity = req.Identity
            sb.runtime_pid = int(reply.get("pid") or 0)
            sb.state = SandboxState.WARM if sb.state is SandboxState.WARMUP else sb.state
            init_error = None if reply.get("ok") else (reply.get("error") or {"errorMessage": "runtime failed to start",
                                                                                 "errorType": "Runtime.InitError"})
            log.info("warmup_done", container=sb.id, function=cfg.FunctionArn, code=code_hash[:12],
                     ms=round((time.monotonic() - started) * 1000, 2), init_error=bool(init_error))
            return WarmupResponse(Container=self.info(sb), InitError=init_error)

    async def cooldown(self, container_id: str) -> ContainerInfo:
        sb = self.get(container_id)
        async with sb.lock:
            await self._reset_locked(sb)
        return self.info(sb)

    async def reborn(self, container_id: str) -> ContainerInfo:
        sb = self.get(container_id)
        async with sb.lock:
            await self._rebuild_locked(sb)
        return self.info(sb)

    # ---- internals -----------------------------------------------------------------------------

    def _new_sandbox(self, index: int) -> Sandbox:
        s = self.settings
        sid = f"{s.pod_name}-c{index}"
        return Sandbox(index=index, id=sid, slot_dir=s.slots_dir / sid,
                       invoke_socket=s.sockets_dir / sid / "invoke.sock", uid=s.uid_base + index,
                       memory_limit=s.runner_memory)

    async def _net(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._net_executor, fn, *args)

    def _runtime_dir(self, runtime: RuntimeConfiguration) -> Path:
        base = self.settings.runtime_path.resolve()
        path = Path(runtime.Path or base / runtime.Name).resolve()
        if path != base and base not in path.parents:
            raise InvalidParameterValue(f"runtime path {runtime.Path} is outside {base}")
        if not path.is_dir():
            raise InvalidParameterValue(f"runtime {runtime.Name} is not prepared ({path} is missing)")
        return path

    async def _build(self, sb: Sandbox) -> None:
        """Create the sandbox's kernel objects and start its runner; on failure leave it DEAD."""
        s = self.settings
        sb.state = SandboxState.STARTING
        sb.current_event = "event_init"
        sb.identity = ""
        sb.memory_limit = s.runner_memory
        listener: socket.socket | None = None
        theirs: socket.socket | None = None
        try:
            for sub in ("root", "task", "runtime"):
                (sb.slot_dir / sub).mkdir(parents=True, exist_ok=True)
            sb.invoke_socket.parent.mkdir(parents=True, exist_ok=True)
            sb.cgroup = self._cgroups.create(f"{s.cgroup_group}/{sb.id}")
            sb.cgroup.set_memory_limit(s.runner_memory)
            sb.cgroup.set_cpu_limit(s.runner_millicpus)
            sb.cgroup.set_pids_limit(s.runner_pids)
            sb.invoke_socket.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(sb.invoke_socket))
            os.chmod(sb.invoke_socket, 0o600)
            listener.listen(512)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            loop = asyncio.get_running_loop()
            sb.ready = loop.create_future()
            sb.link = RunnerLink(ours, on_message=lambda m, sb=sb: self._on_runner_message(sb, m),
                                 on_close=lambda sb=sb, link_id=id(ours): self._on_runner_gone(sb, link_id))
            spec = {
                "id": sb.id, "hostname": sb.id, "cgroup_procs": sb.cgroup.procs_files,
                "slot_dir": str(sb.slot_dir), "binds": self._binds, "symlinks": self._symlinks,
                "tmp_size": s.tmp_size, "uid": sb.uid, "gid": sb.uid,
            }
            sb.pid = await self._zygote.spawn(spec, [theirs.fileno(), listener.fileno()])
            theirs.close()
            theirs = None
            listener.close()
            listener = None
            message = await asyncio.wait_for(sb.ready, s.runner_timeout)
            if message.get("op") != "ready":
                raise RuntimeError(f"sandbox init failed: {message.get('error', message)}")
            if self._network is not None:
                sb.nic = await self._net(self._network.attach, sb.pid, sb.index)
            sb.state = SandboxState.COLD
            sb.current_event = ""
            log.info("sandbox_built", container=sb.id, pid=sb.pid,
                     address=sb.nic.address if sb.nic else None)
        except BaseException as exc:
            if listener is not None:
                listener.close()
            if theirs is not None:
                theirs.close()
            log.error("sandbox_build_failed", container=sb.id, error=str(exc) or type(exc).__name__)
            await self._destroy(sb)
            raise

    async def _destroy(self, sb: Sandbox) -> None:
        sb.state = SandboxState.DEAD
        sb.current_event = "event_reset"
        link, sb.link = sb.link, None
        if sb.pid:
            try:
                os.kill(sb.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if link is not None:
            await link.close()
        if sb.cgroup is not None:
            cg, sb.cgroup = sb.cgroup, None
            try:
                await asyncio.to_thread(cg.remove)
            except OSError as exc:
                log.warning("cgroup_remove_failed", container=sb.id, error=str(exc))
        for sub in ("task", "runtime"):
            mounts.unmount(str(sb.slot_dir / sub))
        if sb.nic is not None and self._network is not None:
            nic, sb.nic = sb.nic, None
            await self._net(self._network.detach, nic)
        sb.invoke_socket.unlink(missing_ok=True)
        sb.pid = 0
        sb.identity = ""

    async def _reset_locked(self, sb: Sandbox) -> None:
        """Back to COLD without rebuilding; a runner that fails to reset gets its sandbox rebuilt."""
        if sb.state in (SandboxState.DEAD, SandboxState.STARTING) or sb.link is None:
            await self._rebuild_locked(sb)
            return
        sb.state = SandboxState.RESETTING
        sb.current_event = "event_reset"
        try:
            await sb.link.request({"op": "reset"}, {"reset_done"}, self.settings.runner_timeout)
            for sub in ("task", "runtime"):
                mounts.unmount(str(sb.slot_dir / sub))
            assert sb.cgroup is not None
            sb.memory_limit = self.settings.runner_memory
            sb.cgroup.set_memory_limit(sb.memory_limit)
        except (LinkClosed, asyncio.TimeoutError, OSError, AssertionError) as exc:
            log.warning("reset_failed", container=sb.id, error=str(exc) or type(exc).__name__)
            await self._rebuild_locked(sb)
            return
        sb.identity = ""
        sb.runtime_pid = 0
        sb.state = SandboxState.COLD
        sb.current_event = ""
        log.info("sandbox_reset", container=sb.id)

    async def _rebuild_locked(self, sb: Sandbox) -> None:
        await self._destroy(sb)
        if self._closing:
            return
        try:
            await self._build(sb)
        except Exception as exc:  # noqa: BLE001 - the sandbox stays DEAD and is retried later
            log.error("sandbox_rebuild_failed", container=sb.id, error=str(exc))
            self._spawn_task(self._retry_build(sb))

    async def _retry_build(self, sb: Sandbox) -> None:
        delay = 1.0
        while not self._closing:
            await asyncio.sleep(delay)
            async with sb.lock:
                if sb.state is not SandboxState.DEAD:
                    return
                try:
                    await self._build(sb)
                    return
                except Exception:  # noqa: BLE001
                    delay = min(delay * 2, 30.0)

    def _on_runner_message(self, sb: Sandbox, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in ("ready", "failed"):
            if sb.ready is not None and not sb.ready.done():
                sb.ready.set_result(message)
            return
        if op == "exited":
            oom = False
            if sb.cgroup is not None:
                try:
                    oom = sb.cgroup.oom_kills() > sb.oom_base
                except OSError:
                    pass
            sb.last_exit = {**message, "oom": oom}
            sb.runtime_pid = 0
            if sb.state is SandboxState.WARM:
                sb.state = SandboxState.STOPPED
            log.info("runtime_exited", container=sb.id, code=message.get("code"),
                     signal=message.get("signal"), oom=oom,
                     output=str(message.get("output") or "")[-1000:])
            return
        log.debug("runner_message", container=sb.id, op=op)

    def _on_runner_gone(self, sb: Sandbox, link_id: int) -> None:
        if sb.ready is not None and not sb.ready.done():
            sb.ready.set_result({"op": "failed", "error": "the sandbox init exited before it was ready"})
        if self._closing or sb.state in (SandboxState.DEAD, SandboxState.STARTING):
            return
        log.warning("runner_gone", container=sb.id, state=sb.state.value)
        self._spawn_task(self._heal(sb))

    async def _heal(self, sb: Sandbox) -> None:
        async with sb.lock:
            if sb.link is not None and not sb.link.closed:
                return
            await self._rebuild_locked(sb)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _code_hash_hex(code_sha256: str) -> str:
    try:
        raw = base64.b64decode(code_sha256, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InvalidParameterValue("Configuration.CodeSha256 must be the base64 SHA-256 of the code zip")
    return raw.hex()


def runtime_env(cfg: FunctionConfiguration, runtime: RuntimeConfiguration) -> dict[str, str]:
    """The environment of a function's runtime: the function's variables plus the platform's."""
    env = {**runtime.Env, **cfg.Environment.Variables}
    env.update({
        "EASYFAAS_HANDLER": cfg.Handler, "_HANDLER": cfg.Handler,
        "EASYFAAS_FUNCTION_NAME": cfg.FunctionName, "EASYFAAS_FUNCTION_VERSION": cfg.Version,
        "EASYFAAS_FUNCTION_BRN": cfg.FunctionArn, "EASYFAAS_MEMORY_SIZE": str(cfg.MemorySize),
        "EASYFAAS_TIMEOUT": str(cfg.Timeout), "EASYFAAS_RUNTIME": runtime.Name,
        "AWS_LAMBDA_FUNCTION_NAME": cfg.FunctionName, "AWS_LAMBDA_FUNCTION_VERSION": cfg.Version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg.MemorySize), "LAMBDA_TASK_ROOT": "/var/task",
        "BCE_USER_CODE_ROOT": "/var/task",
    })
    env.setdefault("EASYFAAS_RUNTIME_MODE", runtime.Env.get("EASYFAAS_RUNTIME_MODE", ""))
    return env
