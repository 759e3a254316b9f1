"""The pool's sandboxes by id, their states and the background tasks working on them.

The registry is the only writer of a sandbox's ``state``: :meth:`Registry.set_state` records the
change and emits it as an event while the sandbox is in the pool. Everything else of the pool
(lifecycle, warmup, standby, health, the API operations) calls it; it calls none of them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Iterator

from easyfaas.errors import ResourceNotFound
from easyfaas.models import ContainerInfo, FuncletEventType, Resource, ResourceStats, RuntimeExit, SandboxState
from funclet.pool.events import EventLog
from funclet.pool.records import Sandbox
from funclet.pool.settings import PoolSettings


class Registry:
    def __init__(self, settings: PoolSettings, events: EventLog) -> None:
        self.settings = settings
        self.events = events
        self._sandboxes: dict[str, Sandbox] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._epoch = 0
        self.closing = False
        # Plain counts the funclet's /metrics reads (funclet/metrics.py).
        self.counters: dict[str, int] = {"oom_kill": 0, "code_image_built": 0}

    # -- the sandboxes --

    def __len__(self) -> int:
        return len(self._sandboxes)

    def __iter__(self) -> Iterator[Sandbox]:
        return iter(list(self._sandboxes.values()))

    def get(self, container_id: str) -> Sandbox:
        try:
            return self._sandboxes[container_id]
        except KeyError:
            raise ResourceNotFound(f"container {container_id} does not exist") from None

    def find(self, container_id: str) -> Sandbox | None:
        return self._sandboxes.get(container_id)

    def holds(self, sb: Sandbox) -> bool:
        """Whether ``sb`` is (still) the pool's sandbox of its id."""
        return self._sandboxes.get(sb.id) is sb

    def add(self, index: int) -> Sandbox:
        """A new record for sandbox ``index`` (STARTING, nothing built yet), in the pool."""
        s = self.settings
        sid = f"{s.pod_name}-c{index}"
        sb = Sandbox(index=index, id=sid, slot_dir=s.slots_dir / sid,
                     invoke_socket=s.sockets_dir / sid / "invoke.sock", uid=s.uid_base + index,
                     memory_limit=s.runner_memory)
        self._sandboxes[sb.id] = sb
        return sb

    def discard(self, sb: Sandbox, reason: str) -> None:
        """Take ``sb`` out of the pool for good (its kernel objects are gone)."""
        if self.holds(sb):
            del self._sandboxes[sb.id]
            self.emit(FuncletEventType.REMOVED, sb, reason=reason)

    def free_index(self) -> int:
        used = {sb.index for sb in self._sandboxes.values()}
        index = 0
        while index in used:
            index += 1
        return index

    def next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    # -- state and events --

    def set_state(self, sb: Sandbox, state: SandboxState, reason: str = "") -> None:
        if sb.state is state:
            return
        sb.state = state
        if self.holds(sb):
            self.emit(FuncletEventType.STATE, sb, reason=reason)

    def emit(self, kind: FuncletEventType, sb: Sandbox, *, exit: RuntimeExit | None = None, reason: str = "") -> None:
        self.events.emit(kind, self.info(sb), exit=exit, reason=reason)

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

    # -- background tasks --

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_tasks(self) -> None:
        """No new work from now on; cancel and await what runs."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
