"""The funclet's pool of sandboxes: build, warm, reset, rebuild, grow, shrink and tear down.

A sandbox is built off the request path (cgroup, zygote fork into fresh namespaces, read-only root,
veth). Warmup — the only step a request waits for — is: code image (built once per code hash),
two bind mounts that propagate into the sandbox, the function's memory limit, and the runner's
start command. Reset kills every process of the sandbox but its runner, refreshes /tmp and
unmounts the code, so a sandbox serves many functions over its life without rebuilding its network.

Health: a runner whose control socket closes, or that stops answering pings for
``max_runner_defunct``, gets its sandbox destroyed and rebuilt in the background; a runtime's exit
(with the cgroup's OOM count) is recorded. Every change of a sandbox is an event in
:class:`EventLog`, which the controller follows (``GET /v1/funclet/events``) so it learns about
dead runtimes within milliseconds instead of at its next poll.

The pool starts with ``container_num`` sandboxes (its idle size) and grows on request up to
``max_sandboxes``; shrinking destroys cold sandboxes, never below the idle size.
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

from easyfaas.errors import FaasError, InvalidParameterValue, ResourceConflict, ResourceNotFound, ServiceError
from easyfaas.codezip import CodeArchiveError
from easyfaas.models import (CodePrepareRequest, CodePrepareResponse, ContainerInfo, FuncletEvent, FuncletEvents, FunctionConfiguration, NodeResource,
                             Resource, ResourceStats, RuntimeConfiguration, RuntimeExit, ScaleResponse, WarmupRequest,
                             WarmupResponse)
from easyfaas.feed import FeedBatch, NumberedFeed
from easyfaas.runtimes import RuntimeCatalog
from funclet.code_source import load_code
from funclet.runner_link import LinkClosed, RunnerLink, Zygote
from funclet.sandbox import mounts
from funclet.sandbox.cgroup import CgroupDriver, SandboxCgroup
from funclet.sandbox.codeimage import CodeImageError, CodeImageStore
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
    REMOVING = "removing"    # being destroyed for good (the pool shrinks)


# Pre-started runtimes that fail or die this many times in a row are given up on (a broken runtime
# must not be restarted in a loop); the count restarts when one serves a function.
MAX_STANDBY_FAILURES = 5

# States in which the runner is idle and must answer a ping.
_PINGABLE = frozenset({SandboxState.COLD, SandboxState.WARM, SandboxState.STOPPED})


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
    max_sandboxes: int = 0           # 0: container_num (a fixed pool)
    ping_interval: float = 2.0       # 0: no health pings
    max_runner_defunct: float = 10.0
    event_buffer: int = 1024
    max_code_images: int = 256
    standby_runtimes: tuple[str, ...] = ()  # runtimes kept pre-started in idle sandboxes
    standby_sandboxes: int = 0              # how many idle sandboxes each of them stands by in

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

    @property
    def bound(self) -> int:
        """The most sandboxes the pool may hold."""
        return max(self.container_num, self.max_sandboxes)


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
    function_brn: str = ""
    code_hash: str = ""              # the code image bound into the slot
    runtime_bound: str = ""          # the runtime directory bound into the slot
    standby: str = ""                # the runtime pre-started in it (COLD only), by Name
    current_event: str = "event_init"
    memory_limit: int = 0
    oom_base: int = 0
    oom_seen: int = 0
    runtime_pid: int = 0
    epoch: int = 0
    last_exit: RuntimeExit | None = None
    created_at: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Future[dict[str, Any]] | None = None


class EventLog:
    """The last ``size`` sandbox events, numbered; readers wait for the ones after a number."""

    def __init__(self, size: int = 1024) -> None:
        self._feed: NumberedFeed[FuncletEvent] = NumberedFeed(size)
        self.boot_id = self._feed.boot_id

    @property
    def seq(self) -> int:
        return self._feed.seq

    def emit(self, kind: str, container: ContainerInfo, *, exit: RuntimeExit | None = None,
             reason: str = "") -> FuncletEvent:
        return self._feed.append(lambda seq: FuncletEvent(
            Seq=seq, Time=time.time(), Type=kind, ContainerID=container.ContainerID, Container=container,
            Exit=exit, Reason=reason))

    def since(self, after: int) -> FuncletEvents:
        return self._batch(self._feed.since(after))

    async def wait(self, after: int, timeout: float) -> FuncletEvents:
        return self._batch(await self._feed.wait(after, timeout))

    @staticmethod
    def _batch(batch: FeedBatch[FuncletEvent]) -> FuncletEvents:
        return FuncletEvents(BootID=batch.boot_id, Seq=batch.seq, Lost=batch.lost, Events=batch.items)

    def close(self) -> None:
        self._feed.close()


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
        self._runtimes = RuntimeCatalog(settings.runtime_path)
        self._standby_filling = False
        self._standby_failures = 0
        self._epoch = 0
        self.events = EventLog(settings.event_buffer)

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
        for sb in self._sandboxes.values():
            if sb.state is SandboxState.DEAD:
                self._spawn_task(self._retry_build(sb))
        if s.ping_interval > 0:
            self._spawn_task(self._watch())
        log.info("pool_started", sandboxes=len(results) - len(failed), failed=len(failed),
                 max_sandboxes=s.bound, boot_id=self.events.boot_id)

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
        self.events.close()
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
                            Capacity=capacity, Reserved=reserved, Allocatable=allocatable,
                            BootID=self.events.boot_id, IdleSandboxes=s.container_num, MaxSandboxes=s.bound,
                            Sandboxes=len(self._sandboxes))

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
        link = sb.link
        return ContainerInfo(Hostname=sb.id, ContainerID=sb.id, HostPid=sb.pid, CurrentEvent=sb.current_event,
                             Resource=Resource(MilliCPUs=self.settings.runner_millicpus, Memory=sb.memory_limit),
                             ResourceStats=resource_stats, State=sb.state.value,
                             InvokeSocket=str(sb.invoke_socket), Identity=sb.identity, OOMKills=oom,
                             Epoch=sb.epoch, LastExit=sb.last_exit,
                             LastLiveness=link.last_heard if link is not None else 0.0,
                             FunctionBrn=sb.function_brn, Standby=sb.standby)

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
            sb.epoch = self._next_epoch()
            sb.identity = req.Identity
            sb.function_brn = cfg.FunctionArn
            sb.last_exit = None
            sb.current_event = "event_warmup"
            self._set_state(sb, SandboxState.WARMUP)
            started = time.monotonic()
            try:
                image = await asyncio.wait_for(
                    self._images.ensure(code_hash, lambda: load_code(req.Code, max_size=self.settings.max_code_size)),
                    self.settings.warmup_timeout)
                mounts.bind(str(image.mountpoint), str(sb.slot_dir / "task"), readonly=True)
                sb.code_hash = code_hash
                self._bind_runtime(sb, runtime_dir)
                assert sb.cgroup is not None and sb.link is not None
                # The function's MemorySize is its sandbox's limit: the kernel OOM-kills inside this
                # cgroup only, whatever the rest of the box is doing.
                sb.memory_limit = cfg.MemorySize * MiB
                sb.cgroup.set_memory_limit(sb.memory_limit)
                sb.oom_base = sb.oom_seen = sb.cgroup.oom_kills()
                # The runner hands a matching pre-started runtime the function, or replaces it.
                used_standby, sb.standby = sb.standby == runtime.Name, ""
                reply = await sb.link.request(
                    {"op": "start", "runtime": runtime.to_dict(), "env": runtime_env(cfg, runtime),
                     "function": {"name": cfg.FunctionName, "version": cfg.Version, "brn": cfg.FunctionArn,
                                  "handler": cfg.Handler, "memory": cfg.MemorySize, "timeout": cfg.Timeout}},
                    {"started"}, self.settings.warmup_timeout)
            except BaseException as exc:
                log.warning("warmup_failed", container=sb.id, error=str(exc) or type(exc).__name__)
                await self._reset_locked(sb)
                if isinstance(exc, FaasError):
                    raise
                if isinstance(exc, (asyncio.TimeoutError, LinkClosed)):
                    raise ServiceError(f"warm up container {sb.id} failed: {exc or 'timed out'}") from None
                if isinstance(exc, OSError):
                    raise ServiceError(f"warm up container {sb.id} failed: {exc.strerror or exc}"
                                       f"{' (' + exc.filename + ')' if exc.filename else ''}") from None
                if isinstance(exc, Exception):
                    raise ServiceError(f"warm up container {sb.id} failed: {exc}") from None
                raise
            sb.runtime_pid = int(reply.get("pid") or 0)
            exited = sb.last_exit is not None and sb.last_exit.Epoch == sb.epoch
            if sb.state is SandboxState.WARMUP:
                self._set_state(sb, SandboxState.STOPPED if exited else SandboxState.WARM)
            sb.current_event = ""
            init_error = None if reply.get("ok") else (reply.get("error") or {"errorMessage": "runtime failed to start",
                                                                                 "errorType": "Runtime.InitError"})
            log.info("warmup_done", container=sb.id, function=cfg.FunctionArn, code=code_hash[:12],
                     ms=round((time.monotonic() - started) * 1000, 2), init_error=bool(init_error),
                     memory_mb=cfg.MemorySize, epoch=sb.epoch, standby=used_standby)
            if used_standby:
                if not init_error:
                    self._standby_failures = 0
                self._want_standby()
            if len(self._images.images()) > self._images.max_images:
                self._spawn_task(self._trim_images())
            return WarmupResponse(Container=self.info(sb), InitError=init_error)

    async def prepare_code(self, req: CodePrepareRequest) -> CodePrepareResponse:
        """Build the code's image now, so the first warmup of a function using it does not wait for it."""
        code_hash = _code_hash_hex(req.CodeSha256)
        if self._closing:
            raise ServiceError("the funclet is stopping")
        built = not self._images.is_built(code_hash)
        try:
            image = await asyncio.wait_for(
                self._images.ensure(code_hash, lambda: load_code(req.Code, max_size=self.settings.max_code_size)),
                self.settings.warmup_timeout)
        except asyncio.TimeoutError:
            raise ServiceError(f"building the image of code {code_hash[:12]} timed out") from None
        except CodeImageError as exc:
            raise ServiceError(str(exc)) from None
        except CodeArchiveError as exc:
            raise InvalidParameterValue(f"code {code_hash[:12]}: {exc}") from None
        await self._trim_images()
        return CodePrepareResponse(CodeSha256=req.CodeSha256, ImageSize=image.size, Built=built)

    async def _trim_images(self) -> None:
        evicted = await self._images.trim({sb.code_hash for sb in self._sandboxes.values() if sb.code_hash})
        if evicted:
            log.info("code_images_trimmed", evicted=len(evicted), kept=len(self._images.images()))

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

    async def grow(self, count: int) -> ScaleResponse:
        """Build up to ``count`` more sandboxes (never beyond the bound); answers with those built."""
        if self._closing:
            raise ServiceError("the funclet is shutting down")
        room = self.settings.bound - len(self._sandboxes)
        new: list[Sandbox] = []
        for _ in range(max(0, min(count, room))):
            sb = self._new_sandbox(self._free_index())
            self._sandboxes[sb.id] = sb
            new.append(sb)
            self.events.emit("created", self.info(sb))
        results = await asyncio.gather(*(self._grow_one(sb) for sb in new), return_exceptions=True)
        built = [sb for sb, result in zip(new, results) if not isinstance(result, BaseException)]
        refused = {} if len(new) == count else {
            "bound": f"the pool is at its bound of {self.settings.bound} sandboxes"}
        for sb, result in zip(new, results):
            if isinstance(result, BaseException):
                refused[sb.id] = f"build failed: {result}"
        log.info("pool_grown", requested=count, built=len(built), failed=len(new) - len(built),
                 sandboxes=len(self._sandboxes))
        return ScaleResponse(Containers=[self.info(sb) for sb in built], Refused=refused)

    async def shrink(self, container_ids: list[str]) -> ScaleResponse:
        """Destroy these cold sandboxes for good; busy ones, and any below the idle size, are refused."""
        removed: list[str] = []
        refused: dict[str, str] = {}
        for cid in container_ids:
            sb = self._sandboxes.get(cid)
            if sb is None:
                removed.append(cid)  # already gone: the caller's goal is met
                continue
            if len(self._sandboxes) <= self.settings.container_num:
                refused[cid] = f"the pool is at its idle size of {self.settings.container_num} sandboxes"
                continue
            if sb.lock.locked() or sb.state is not SandboxState.COLD:
                refused[cid] = f"container {cid} is {sb.state.value}, not cold"
                continue
            async with sb.lock:
                if sb.state is not SandboxState.COLD or self._sandboxes.get(cid) is not sb:
                    refused[cid] = f"container {cid} is {sb.state.value}, not cold"
                    continue
                await self._remove_locked(sb, "shrink")
                removed.append(cid)
        if removed:
            log.info("pool_shrunk", removed=removed, refused=sorted(refused), sandboxes=len(self._sandboxes))
        return ScaleResponse(Removed=removed, Refused=refused)

    # ---- internals -----------------------------------------------------------------------------

    def _new_sandbox(self, index: int) -> Sandbox:
        s = self.settings
        sid = f"{s.pod_name}-c{index}"
        return Sandbox(index=index, id=sid, slot_dir=s.slots_dir / sid,
                       invoke_socket=s.sockets_dir / sid / "invoke.sock", uid=s.uid_base + index,
                       memory_limit=s.runner_memory)

    def _free_index(self) -> int:
        used = {sb.index for sb in self._sandboxes.values()}
        index = 0
        while index in used:
            index += 1
        return index

    def _next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    def _set_state(self, sb: Sandbox, state: SandboxState, reason: str = "") -> None:
        if sb.state is state:
            return
        sb.state = state
        if self._sandboxes.get(sb.id) is sb:
            self.events.emit("state", self.info(sb), reason=reason)

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

    async def _grow_one(self, sb: Sandbox) -> None:
        async with sb.lock:
            try:
                await self._build(sb)
            except BaseException:
                # A sandbox the pool grew by is not worth retrying: forget it entirely.
                if self._sandboxes.get(sb.id) is sb:
                    await self._remove_locked(sb, "build failed")
                raise

    async def _build(self, sb: Sandbox) -> None:
        """Create the sandbox's kernel objects and start its runner; on failure leave it DEAD."""
        s = self.settings
        self._set_state(sb, SandboxState.STARTING)
        sb.current_event = "event_init"
        sb.identity = ""
        sb.function_brn = ""
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
            sb.oom_base = sb.oom_seen = sb.cgroup.oom_kills()
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
            sb.epoch = self._next_epoch()
            sb.current_event = ""
            self._set_state(sb, SandboxState.COLD, "built")
            log.info("sandbox_built", container=sb.id, pid=sb.pid,
                     address=sb.nic.address if sb.nic else None)
            self._want_standby()
        except BaseException as exc:
            if listener is not None:
                listener.close()
            if theirs is not None:
                theirs.close()
            log.error("sandbox_build_failed", container=sb.id, error=str(exc) or type(exc).__name__)
            await self._destroy(sb)
            raise

    async def _destroy(self, sb: Sandbox, state: SandboxState = SandboxState.DEAD) -> None:
        self._set_state(sb, state)
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
        sb.runtime_pid = 0
        sb.identity = ""
        sb.code_hash = ""
        sb.runtime_bound = ""
        sb.standby = ""
        sb.function_brn = ""

    async def _remove_locked(self, sb: Sandbox, reason: str) -> None:
        """Destroy a sandbox for good: its kernel objects, its directories, its entry in the pool."""
        await self._destroy(sb, SandboxState.REMOVING)
        for path in (sb.slot_dir / "root", sb.slot_dir / "task", sb.slot_dir / "runtime", sb.slot_dir,
                     sb.invoke_socket.parent):
            try:
                path.rmdir()
            except OSError:
                pass  # still a mountpoint of a dying namespace, or not empty: harmless, reused later
        if self._sandboxes.get(sb.id) is sb:
            del self._sandboxes[sb.id]
            self.events.emit("removed", self.info(sb), reason=reason)

    async def _reset_locked(self, sb: Sandbox) -> None:
        """Back to COLD without rebuilding; a runner that fails to reset gets its sandbox rebuilt."""
        if sb.state in (SandboxState.DEAD, SandboxState.STARTING) or sb.link is None:
            await self._rebuild_locked(sb)
            return
        sb.current_event = "event_reset"
        self._set_state(sb, SandboxState.RESETTING)
        try:
            sb.standby = ""
            await sb.link.request({"op": "reset"}, {"reset_done"}, self.settings.runner_timeout)
            for sub in ("task", "runtime"):
                mounts.unmount(str(sb.slot_dir / sub))
            sb.runtime_bound = ""
            assert sb.cgroup is not None
            sb.memory_limit = self.settings.runner_memory
            sb.cgroup.set_memory_limit(sb.memory_limit)
        except (LinkClosed, asyncio.TimeoutError, OSError, AssertionError) as exc:
            log.warning("reset_failed", container=sb.id, error=str(exc) or type(exc).__name__)
            await self._rebuild_locked(sb)
            return
        sb.identity = ""
        sb.function_brn = ""
        sb.code_hash = ""
        sb.runtime_pid = 0
        sb.epoch = self._next_epoch()
        sb.current_event = ""
        self._set_state(sb, SandboxState.COLD, "reset")
        log.info("sandbox_reset", container=sb.id)
        self._want_standby()

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
        while not self._closing and self._sandboxes.get(sb.id) is sb:
            await asyncio.sleep(delay)
            async with sb.lock:
                if sb.state is not SandboxState.DEAD or self._sandboxes.get(sb.id) is not sb:
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
        if op == "exited" and message.get("standby"):
            self._standby_exited(sb, message)
            return
        if op == "exited":
            oom = False
            if sb.cgroup is not None:
                try:
                    kills = sb.cgroup.oom_kills()
                    oom = kills > sb.oom_base
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
            self.events.emit("exited", self.info(sb), exit=sb.last_exit)
            if sb.state is SandboxState.WARM:
                self._set_state(sb, SandboxState.STOPPED, "runtime exited")
            return
        log.debug("runner_message", container=sb.id, op=op)

    def _on_runner_gone(self, sb: Sandbox, link_id: int) -> None:
        if sb.ready is not None and not sb.ready.done():
            sb.ready.set_result({"op": "failed", "error": "the sandbox init exited before it was ready"})
        if self._closing or sb.state in (SandboxState.DEAD, SandboxState.STARTING, SandboxState.REMOVING):
            return
        log.warning("runner_gone", container=sb.id, state=sb.state.value)
        self._spawn_task(self._heal(sb, "runner gone"))

    async def _heal(self, sb: Sandbox, reason: str) -> None:
        async with sb.lock:
            if self._sandboxes.get(sb.id) is not sb or (sb.link is not None and not sb.link.closed):
                return
            self.events.emit("defunct", self.info(sb), reason=reason)
            await self._rebuild_locked(sb)

    # ---- health --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Ping idle runners; rebuild the sandboxes whose runner has been silent too long."""
        while not self._closing:
            await asyncio.sleep(self.settings.ping_interval)
            sandboxes = list(self._sandboxes.values())
            await asyncio.gather(*(self._check(sb) for sb in sandboxes), return_exceptions=True)

    async def _check(self, sb: Sandbox) -> None:
        if sb.cgroup is not None:
            # OOM kills that did not end the runtime (a process the exec runtime spawned, say).
            try:
                kills = sb.cgroup.oom_kills()
            except OSError:
                kills = sb.oom_seen
            if kills > sb.oom_seen:
                sb.oom_seen = kills
                log.info("sandbox_oom_kill", container=sb.id, function=sb.function_brn, oom_kills=kills,
                         memory_limit_mb=sb.memory_limit // MiB)
                self.events.emit("oom", self.info(sb), reason=f"{kills} OOM kills")
        if sb.state not in _PINGABLE or sb.link is None or sb.lock.locked():
            return
        async with sb.lock:
            link = sb.link
            if sb.state not in _PINGABLE or link is None or link.closed:
                return
            try:
                await link.request({"op": "ping"}, {"pong"}, min(1.0, self.settings.ping_interval))
                return
            except LinkClosed:
                return  # _on_runner_gone heals it
            except asyncio.TimeoutError:
                pass
            silent = time.time() - link.last_heard
            if silent < self.settings.max_runner_defunct:
                log.warning("runner_ping_missed", container=sb.id, silent_s=round(silent, 1))
                return
            log.warning("runner_defunct", container=sb.id, state=sb.state.value, silent_s=round(silent, 1))
            self.events.emit("defunct", self.info(sb), reason=f"runner silent for {silent:.1f}s")
            await self._rebuild_locked(sb)

    # ---- pre-started runtimes ------------------------------------------------------------------

    def _bind_runtime(self, sb: Sandbox, runtime_dir: Path) -> None:
        if sb.runtime_bound == str(runtime_dir):
            return
        if sb.runtime_bound:
            mounts.unmount(str(sb.slot_dir / "runtime"))
            sb.runtime_bound = ""
        mounts.bind(str(runtime_dir), str(sb.slot_dir / "runtime"), readonly=True)
        sb.runtime_bound = str(runtime_dir)

    def _standby_targets(self) -> list[RuntimeConfiguration]:
        """The configured standby runtimes that are prepared here and support it."""
        targets = []
        for name in self.settings.standby_runtimes:
            runtime = self._runtimes.get(name)
            if runtime is not None and runtime.Standby and runtime.Launch == "exec":
                targets.append(runtime)
        return targets

    def _want_standby(self) -> None:
        """Top up the pre-started runtimes in idle sandboxes, in the background."""
        s = self.settings
        if (s.standby_sandboxes <= 0 or not s.standby_runtimes or self._closing or self._standby_filling
                or self._standby_failures >= MAX_STANDBY_FAILURES):
            return
        self._standby_filling = True
        self._spawn_task(self._fill_standby())

    async def _fill_standby(self) -> None:
        try:
            for runtime in self._standby_targets():
                while not self._closing and self._standby_failures < MAX_STANDBY_FAILURES:
                    sandboxes = list(self._sandboxes.values())
                    if sum(1 for sb in sandboxes if sb.standby == runtime.Name) >= self.settings.standby_sandboxes:
                        break
                    # Never more than half the pool: the other runtimes' cold starts need sandboxes too.
                    if sum(1 for sb in sandboxes if sb.standby) >= len(sandboxes) // 2:
                        return
                    free = [sb for sb in sandboxes if sb.state is SandboxState.COLD and not sb.standby
                            and not sb.lock.locked() and sb.link is not None]
                    if not free:
                        return
                    sb = free[-1]  # the controller takes free sandboxes from the front
                    async with sb.lock:
                        if sb.state is not SandboxState.COLD or sb.standby or sb.link is None:
                            continue
                        if not await self._prestart_locked(sb, runtime):
                            self._standby_failures += 1
                if self._standby_failures >= MAX_STANDBY_FAILURES:
                    log.error("standby_disabled", runtime=runtime.Name, failures=self._standby_failures)
                    return
        finally:
            self._standby_filling = False

    async def _prestart_locked(self, sb: Sandbox, runtime: RuntimeConfiguration) -> bool:
        assert sb.link is not None
        try:
            self._bind_runtime(sb, self._runtime_dir(runtime))
            reply = await sb.link.request({"op": "prestart", "runtime": runtime.to_dict()}, {"prestarted"},
                                          self.settings.runner_timeout)
        except (LinkClosed, asyncio.TimeoutError, OSError, FaasError) as exc:
            log.warning("standby_failed", container=sb.id, runtime=runtime.Name, error=str(exc) or type(exc).__name__)
            return False
        if not reply.get("ok"):
            log.warning("standby_refused", container=sb.id, runtime=runtime.Name, error=reply.get("error"))
            return False
        sb.standby = runtime.Name
        sb.runtime_pid = int(reply.get("pid") or 0)
        self.events.emit("state", self.info(sb), reason=f"standby {runtime.Name}")
        log.info("standby_started", container=sb.id, runtime=runtime.Name, pid=sb.runtime_pid)
        return True

    def _standby_exited(self, sb: Sandbox, message: dict[str, Any]) -> None:
        runtime, sb.standby, sb.runtime_pid = sb.standby, "", 0
        self._standby_failures += 1
        log.warning("standby_exited", container=sb.id, runtime=runtime, code=message.get("code"),
                    signal=message.get("signal"), output=str(message.get("output") or "")[-500:])
        if self._sandboxes.get(sb.id) is sb:
            self.events.emit("state", self.info(sb), reason="standby exited")
        self._want_standby()

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
    from runner.runtimes.lambda_environment import lambda_variables  # Lambda's variables, one definition
    env.update(lambda_variables(function_name=cfg.FunctionName, function_version=cfg.Version, memory_size_mb=cfg.MemorySize, handler=cfg.Handler, function_brn=cfg.FunctionArn, user_variables=cfg.Environment.Variables))
    env.setdefault("EASYFAAS_RUNTIME_MODE", runtime.Env.get("EASYFAAS_RUNTIME_MODE", ""))
    return env
