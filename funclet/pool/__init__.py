"""The funclet's pool of sandboxes: build, warm, reset, rebuild, grow, shrink and tear down.

Not to be confused with ``funclet/sandbox/``, the kernel parts a sandbox is made of. The pool's
modules, and which way the calls go (each calls only those listed after it):

* :class:`SandboxPool` (here) — the façade ``funclet/app.py`` uses: the pool's lifetime (start,
  close, leftovers of a crashed predecessor) and the API operations, delegated;
* ``warmup`` — warmup and code images built ahead of it;
* ``operations`` — views, cooldown, reborn, grow, shrink;
* ``health`` — pings, defunct runners, OOM kills;
* ``lifecycle`` — kernel build and destroy, reset, rebuild, retry, the runner's reports;
* ``standby`` — standby runtimes kept in idle sandboxes;
* ``slots`` — the code and runtime bind mounts of a sandbox's slot directory;
* ``registry`` — the sandboxes by id, the only writer of their state, events, background tasks;
* ``records``, ``events``, ``settings``, ``kernel`` — the sandbox record, the event log, the
  settings, and the interfaces of the kernel parts and the zygote.
"""

from __future__ import annotations

import asyncio
import os

import structlog

from easyfaas.models import (CodePrepareRequest, CodePrepareResponse, ContainerInfo, NodeResource, SandboxState,
                             ScaleResponse, WarmupRequest, WarmupResponse)
from easyfaas.runtimes import RuntimeCatalog
from funclet.pool.events import EventLog
from funclet.pool.health import HealthWatch
from funclet.pool.kernel import Cgroups, CodeImages, Mounts, Network, Spawner
from funclet.pool.lifecycle import HostBinds, Lifecycle
from funclet.pool.operations import Operations
from funclet.pool.records import Sandbox
from funclet.pool.registry import Registry
from funclet.pool.settings import PoolSettings
from funclet.pool.slots import Slots
from funclet.pool.standby import StandbyKeeper
from funclet.pool.warmup import Warmups
from funclet.sandbox import mounts as kernel_mounts

__all__ = ["EventLog", "PoolSettings", "Sandbox", "SandboxPool"]

log = structlog.get_logger(__name__)


class SandboxPool:
    def __init__(self, settings: PoolSettings, *, cgroups: Cgroups, images: CodeImages, network: Network | None,
                 zygote: Spawner, host_binds: HostBinds, mounts: Mounts = kernel_mounts,
                 runtimes: RuntimeCatalog | None = None) -> None:
        self.settings = settings
        self.events = EventLog(settings.event_buffer)
        self._images = images
        self._mounts = mounts
        self._registry = Registry(settings, self.events)
        slots = Slots(settings.runtime_path, mounts)
        self._standby = StandbyKeeper(self._registry, slots, runtimes or RuntimeCatalog(settings.runtime_path))
        self._lifecycle = Lifecycle(self._registry, slots, self._standby, cgroups=cgroups, network=network,
                                    zygote=zygote, host_binds=host_binds)
        self._health = HealthWatch(self._registry, self._lifecycle)
        self._operations = Operations(self._registry, self._lifecycle)
        self._warmups = Warmups(self._registry, slots, self._lifecycle, self._standby, images)
        self._closed = False
        self.counters = self._registry.counters

    @property
    def code_images(self) -> int:
        """Code images built and mounted now."""
        return len(self._images.images())

    def sandboxes(self) -> list[Sandbox]:
        return list(self._registry)

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        lc = self._lifecycle
        await self.cleanup_leftovers()
        for d in (s.slots_dir, s.images_dir, s.sockets_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(s.sockets_dir, 0o700)
        os.chmod(s.images_dir, 0o700)  # every function's code; sandboxes see theirs through mounts only
        self._mounts.make_shared_dir(str(s.slots_dir))
        if lc.network is not None:
            await lc.net(lc.network.setup)
        await lc.zygote.start()
        sandboxes = [self._registry.add(i) for i in range(s.container_num)]
        results = await asyncio.gather(*(lc.build(sb) for sb in sandboxes), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed and len(failed) == len(results):
            raise RuntimeError(f"no sandbox could be built: {failed[0]}")
        for sb in sandboxes:
            if sb.state is SandboxState.DEAD:
                self._registry.spawn_task(lc.retry_build(sb))
        if s.ping_interval > 0:
            self._registry.spawn_task(self._health.watch())
        log.info("pool_started", sandboxes=len(results) - len(failed), failed=len(failed),
                 max_sandboxes=s.bound, boot_id=self.events.boot_id)

    async def cleanup_leftovers(self) -> None:
        """Remove what a crashed predecessor left: mounts, loop devices, cgroups, veths, sockets."""
        s = self.settings
        lc = self._lifecycle
        removed_mounts = self._mounts.unmount_under(str(s.slots_dir)) if s.slots_dir.exists() else 0
        self._images.cleanup_stale()
        removed_groups = lc.cgroups.cleanup(s.cgroup_group)
        removed_links = await lc.net(lc.network.cleanup_stale) if lc.network is not None else 0
        if s.sockets_dir.exists():
            for p in s.sockets_dir.glob("*/invoke.sock"):
                p.unlink(missing_ok=True)
        if removed_mounts or removed_groups or removed_links:
            log.info("leftovers_removed", mounts=removed_mounts, cgroups=removed_groups, veths=removed_links)

    async def close(self) -> None:
        """Destroy every sandbox and what the pool set up; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        s = self.settings
        lc = self._lifecycle
        self.events.close()
        await self._registry.stop_tasks()
        await asyncio.gather(*(lc.destroy(sb) for sb in self._registry), return_exceptions=True)
        await lc.zygote.stop()
        await self._images.close()
        self._mounts.unmount_under(str(s.slots_dir))
        await asyncio.to_thread(lc.cgroups.cleanup, s.cgroup_group)
        if lc.network is not None:
            await lc.net(lc.network.teardown)
            await lc.net(lc.network.close)
        lc.close_net()
        log.info("pool_closed")

    # ---- the API operations --------------------------------------------------------------------

    def get(self, container_id: str) -> Sandbox:
        return self._registry.get(container_id)

    def list(self, ids: list[str] | None = None) -> list[ContainerInfo]:
        return self._operations.list(ids)

    def node(self) -> NodeResource:
        return self._operations.node()

    def info(self, sb: Sandbox, *, stats: bool = False) -> ContainerInfo:
        return self._registry.info(sb, stats=stats)

    async def warmup(self, req: WarmupRequest) -> WarmupResponse:
        return await self._warmups.warmup(req)

    async def prepare_code(self, req: CodePrepareRequest) -> CodePrepareResponse:
        return await self._warmups.prepare_code(req)

    async def cooldown(self, container_id: str) -> ContainerInfo:
        return await self._operations.cooldown(container_id)

    async def reborn(self, container_id: str) -> ContainerInfo:
        return await self._operations.reborn(container_id)

    async def grow(self, count: int) -> ScaleResponse:
        return await self._operations.grow(count)

    async def shrink(self, container_ids: list[str]) -> ScaleResponse:
        return await self._operations.shrink(container_ids)
