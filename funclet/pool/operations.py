"""The pool's operations the funclet API serves besides warmup: views, cooldown, reborn, grow, shrink.

The pool starts with ``container_num`` sandboxes (its idle size) and grows on request up to
``max_sandboxes``; shrinking destroys cold sandboxes, never below the idle size.
"""

from __future__ import annotations

import asyncio

import structlog

from easyfaas.errors import ServiceError
from easyfaas.models import ContainerInfo, FuncletEventType, NodeResource, Resource, SandboxState, ScaleResponse
from funclet.pool.lifecycle import Lifecycle
from funclet.pool.records import Sandbox
from funclet.pool.registry import Registry

log = structlog.get_logger(__name__)


class Operations:
    def __init__(self, registry: Registry, lifecycle: Lifecycle) -> None:
        self._registry = registry
        self._lifecycle = lifecycle
        self._settings = registry.settings

    def list(self, ids: list[str] | None = None) -> list[ContainerInfo]:
        reg = self._registry
        sandboxes = list(reg) if not ids else [reg.get(i) for i in ids]
        return [reg.info(sb) for sb in sandboxes]

    def node(self) -> NodeResource:
        s = self._settings
        capacity = Resource(MilliCPUs=s.capacity_millicpus, Memory=s.capacity_memory)
        reserved = Resource(MilliCPUs=s.reserved_millicpus, Memory=s.reserved_memory)
        allocatable = Resource(MilliCPUs=max(0, capacity.MilliCPUs - reserved.MilliCPUs),
                               Memory=max(0, capacity.Memory - reserved.Memory))
        return NodeResource(BaseMemory=s.runner_memory,
                            Default=Resource(MilliCPUs=s.runner_millicpus, Memory=s.runner_memory),
                            Capacity=capacity, Reserved=reserved, Allocatable=allocatable,
                            BootID=self._registry.events.boot_id, IdleSandboxes=s.container_num,
                            MaxSandboxes=s.bound, Sandboxes=len(self._registry))

    async def cooldown(self, container_id: str) -> ContainerInfo:
        sb = self._registry.get(container_id)
        async with sb.lock:
            await self._lifecycle.reset_locked(sb)
        return self._registry.info(sb)

    async def reborn(self, container_id: str) -> ContainerInfo:
        sb = self._registry.get(container_id)
        async with sb.lock:
            await self._lifecycle.rebuild_locked(sb)
        return self._registry.info(sb)

    async def grow(self, count: int) -> ScaleResponse:
        """Build up to ``count`` more sandboxes (never beyond the bound); answers with those built."""
        reg = self._registry
        if reg.closing:
            raise ServiceError("the funclet is shutting down")
        room = self._settings.bound - len(reg)
        new: list[Sandbox] = []
        for _ in range(max(0, min(count, room))):
            sb = reg.add(reg.free_index())
            new.append(sb)
            reg.emit(FuncletEventType.CREATED, sb)
        results = await asyncio.gather(*(self._lifecycle.grow_one(sb) for sb in new), return_exceptions=True)
        built = [sb for sb, result in zip(new, results) if not isinstance(result, BaseException)]
        refused = {} if len(new) == count else {
            "bound": f"the pool is at its bound of {self._settings.bound} sandboxes"}
        for sb, result in zip(new, results):
            if isinstance(result, BaseException):
                refused[sb.id] = f"build failed: {result}"
        log.info("pool_grown", requested=count, built=len(built), failed=len(new) - len(built),
                 sandboxes=len(reg))
        return ScaleResponse(Containers=[reg.info(sb) for sb in built], Refused=refused)

    async def shrink(self, container_ids: list[str]) -> ScaleResponse:
        """Destroy these cold sandboxes for good; busy ones, and any below the idle size, are refused."""
        reg = self._registry
        idle_size = self._settings.container_num
        removed: list[str] = []
        refused: dict[str, str] = {}
        for cid in container_ids:
            sb = reg.find(cid)
            if sb is None:
                removed.append(cid)  # already gone: the caller's goal is met
                continue
            if len(reg) <= idle_size:
                refused[cid] = f"the pool is at its idle size of {idle_size} sandboxes"
                continue
            if sb.lock.locked() or sb.state is not SandboxState.COLD:
                refused[cid] = f"container {cid} is {sb.state.value}, not cold"
                continue
            async with sb.lock:
                if sb.state is not SandboxState.COLD or not reg.holds(sb):
                    refused[cid] = f"container {cid} is {sb.state.value}, not cold"
                    continue
                await self._lifecycle.remove_locked(sb, "shrink")
                removed.append(cid)
        if removed:
            log.info("pool_shrunk", removed=removed, refused=sorted(refused), sandboxes=len(reg))
        return ScaleResponse(Removed=removed, Refused=refused)
