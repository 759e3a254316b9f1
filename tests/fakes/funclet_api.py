"""The funclet's HTTP API in memory, for the controller: :class:`FakeFunclet` implements the
FuncletClient methods (the real funclet is covered by the end-to-end tests)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from controller.funclet_client import FuncletError, FuncletUnavailable
from easyfaas.models import (ContainerInfo, FuncletEvent, FuncletEvents, NodeResource, ResetRequest, Resource,
                             ScaleResponse, WarmupRequest, WarmupResponse)

MiB = 1 << 20


class FakeFunclet:
    """The funclet API in memory: containers c0..c<n-1>, every call recorded in ``calls``.

    Sandbox events are what a test pushes (``push``); ``max_sandboxes`` > n lets the pool grow.
    """

    def __init__(self, n: int = 3, *, socket_for: Callable[[str], str] = lambda cid: f"/nonexistent/{cid}.sock",
                 states: dict[str, str] | None = None, allocatable_mb: int = 0, max_sandboxes: int = 0) -> None:
        self.sock_path = "fake-funclet.sock"
        self.socket_for = socket_for
        self.idle = n
        self.max_sandboxes = max_sandboxes
        self.boot_id = "boot-1"
        self.containers = {f"c{i}": self._container(f"c{i}", (states or {}).get(f"c{i}", "cold")) for i in range(n)}
        self.events_log: list[FuncletEvent] = []
        self.events_changed: asyncio.Event | None = None
        self.grow_gate: asyncio.Event | None = None
        self.grow_error: FuncletError | None = None
        self.refuse_shrink = False
        self.epoch = 0
        self.calls: list[tuple[str, str]] = []
        self.warmups: list[WarmupRequest] = []
        self.list_failures = 0
        self.warmup_gate: asyncio.Event | None = None
        self.warmup_error: FuncletError | None = None
        self.init_error: dict[str, Any] | None = None
        self.cooldown_error: FuncletError | None = None
        self.reborn_error: FuncletError | None = None
        self.allocatable_mb = allocatable_mb
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    def _container(self, cid: str, state: str = "cold") -> ContainerInfo:
        return ContainerInfo(ContainerID=cid, Hostname=cid, State=state, InvokeSocket=self.socket_for(cid),
                             Resource=Resource(500, 128 * MiB))

    async def node(self) -> NodeResource:
        self.calls.append(("node", ""))
        alloc = Resource(1000, self.allocatable_mb * MiB)
        return NodeResource(BaseMemory=128 * MiB, Default=Resource(500, 128 * MiB), Capacity=alloc,
                            Allocatable=alloc, BootID=self.boot_id, IdleSandboxes=self.idle,
                            MaxSandboxes=self.max_sandboxes, Sandboxes=len(self.containers))

    def push(self, kind: str, cid: str, **kw: Any) -> None:
        """Emit a sandbox event, as the funclet does when a sandbox changes."""
        info = ContainerInfo.from_dict(self.containers[cid].to_dict()) if cid in self.containers else \
            ContainerInfo(ContainerID=cid, State="removing")
        self.events_log.append(FuncletEvent(Seq=len(self.events_log) + 1, Type=kind, ContainerID=cid,
                                            Container=info, **kw))
        if self.events_changed is not None:
            self.events_changed.set()

    async def events(self, after: int, wait: float) -> FuncletEvents:
        self.calls.append(("events", str(after)))
        seq = len(self.events_log)
        if after < 0:
            return FuncletEvents(BootID=self.boot_id, Seq=seq)
        if after > seq:
            return FuncletEvents(BootID=self.boot_id, Seq=seq, Lost=True)
        if seq == after:
            self.events_changed = asyncio.Event()
            try:
                async with asyncio.timeout(wait):
                    await self.events_changed.wait()
            except TimeoutError:
                pass
        return FuncletEvents(BootID=self.boot_id, Seq=len(self.events_log), Events=self.events_log[after:])

    async def grow(self, count: int) -> ScaleResponse:
        self.calls.append(("grow", str(count)))
        if self.grow_gate is not None:
            await self.grow_gate.wait()
        if self.grow_error is not None:
            raise self.grow_error
        built = []
        for _ in range(max(0, min(count, self.max_sandboxes - len(self.containers)))):
            index = 0
            while f"c{index}" in self.containers:
                index += 1
            c = self.containers[f"c{index}"] = self._container(f"c{index}")
            built.append(ContainerInfo.from_dict(c.to_dict()))
        return ScaleResponse(Containers=built)

    async def shrink(self, ids: list[str]) -> ScaleResponse:
        self.calls.append(("shrink", ",".join(ids)))
        removed, refused = [], {}
        for cid in ids:
            c = self.containers.get(cid)
            if c is None:
                removed.append(cid)
            elif self.refuse_shrink or c.State != "cold" or len(self.containers) <= self.idle:
                refused[cid] = "refused"
            else:
                del self.containers[cid]
                removed.append(cid)
        return ScaleResponse(Removed=removed, Refused=refused)

    async def list(self) -> list[ContainerInfo]:
        self.calls.append(("list", ""))
        if self.list_failures > 0:
            self.list_failures -= 1
            raise FuncletUnavailable("connection refused")
        return [ContainerInfo.from_dict(c.to_dict()) for c in self.containers.values()]

    async def container(self, container_id: str) -> ContainerInfo:
        self.calls.append(("container", container_id))
        if container_id not in self.containers:
            raise FuncletError(404, "ResourceNotFoundException", f"container {container_id} does not exist")
        return ContainerInfo.from_dict(self.containers[container_id].to_dict())

    async def warmup(self, request: WarmupRequest, timeout: float | None = None) -> WarmupResponse:
        self.calls.append(("warmup", request.ContainerID))
        self.warmups.append(request)
        c = self.containers[request.ContainerID]
        if c.State != "cold":
            raise FuncletError(409, "ResourceConflictException", f"container {c.ContainerID} is {c.State}")
        c.State = "warmup"
        if self.warmup_gate is not None:
            await self.warmup_gate.wait()
        if self.warmup_error is not None:
            c.State = "cold"
            raise self.warmup_error
        c.State = "warm"
        c.Identity = request.Identity
        c.Epoch = self.next_epoch()
        c.Resource = Resource(500, request.Configuration.MemorySize * MiB)
        return WarmupResponse(Container=ContainerInfo.from_dict(c.to_dict()), InitError=self.init_error)

    async def cooldown(self, request: ResetRequest) -> ContainerInfo:
        self.calls.append(("cooldown", request.ContainerID))
        if self.cooldown_error is not None:
            raise self.cooldown_error
        return self._reset(request.ContainerID)

    async def reborn(self, request: ResetRequest) -> ContainerInfo:
        self.calls.append(("reborn", request.ContainerID))
        if self.reborn_error is not None:
            raise self.reborn_error
        return self._reset(request.ContainerID)

    def next_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def _reset(self, cid: str) -> ContainerInfo:
        c = self.containers[cid]
        c.Epoch = self.next_epoch()
        c.State = "cold"
        c.Identity = ""
        c.Resource = Resource(500, 128 * MiB)
        return ContainerInfo.from_dict(c.to_dict())

    def ops(self, op: str) -> list[str]:
        return [cid for name, cid in self.calls if name == op]
