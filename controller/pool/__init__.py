"""The controller's pool of sandboxes: one :class:`Pool` composed of a state machine and its collaborators.

Rooms, and the way calls go (each only calls the ones before it)::

    controller.scaling  FunctionPolicy, parse_scaling: a function's scaling policy (what options.py checks)
    records             Sandbox, Phase, Lease, FunctionGroup, ConcurrencyLimit, ...: plain data
    groups              FunctionGroups: function identity → group, shared limits, operator overrides
    machine             Machine: the only writer of a sandbox's phase; requests, queue, transitions
    reconcile           Reconciler: follows the funclet (events, list, restarts), adopts sandboxes
    elastic             Elastic: grows, shrinks, keeps functions warm, the periodic sweep
    (this module)       Pool: the lifetime, and the public face the rest of the controller uses

The machine calls neither the reconciler nor the elastic part; when requests wait for sandboxes it
calls ``machine.demand``, which the pool sets to the elastic part's planner.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import structlog

from controller.funclet_client import FuncletClient
from controller.pool.elastic import Elastic
from controller.pool.machine import Machine
from controller.pool.reconcile import FAILURE_WAIT, Reconciler
from controller.pool.records import MiB, FunctionInitError, Lease, Phase, RuntimeFailure, Sandbox, WarmupFactory
from controller.runtime_channel import RuntimeChannel
from easyfaas.models import NodeResource

__all__ = ["Pool", "Lease", "Sandbox", "Phase", "FunctionInitError", "RuntimeFailure", "WarmupFactory"]

log = structlog.get_logger(__name__)


class Pool:
    """The sandboxes the controller serves invocations from, from start-up to close.

    The request path and the transitions are the machine's own methods, bound here as attributes
    (no extra call on the warm path): ``take_warm``, ``acquire``, ``release``, ``recycle``, ...
    """

    def __init__(self, funclet: FuncletClient, *, runtime_alive_timeout: float = 15.0, task_interval: float = 5.0,
                 max_runtime_idle: float = 60.0, max_transition_time: float = 90.0, concurrent_mode: bool = True,
                 startup_retry_interval: float = 1.0,
                 channel_factory: Callable[[str, int], RuntimeChannel] = RuntimeChannel,
                 queue_length: int = 100, queue_timeout: float = 0.0, min_free_sandboxes: int = 1,
                 max_sandbox_idle: float = 60.0, scale_min_ttl: float = 3600.0,
                 scaling: dict[str, dict[str, Any]] | None = None, use_events: bool = True,
                 failure_wait: float = FAILURE_WAIT) -> None:
        self.funclet = funclet
        self.task_interval = task_interval
        machine = self.machine = Machine(
            funclet, runtime_alive_timeout=runtime_alive_timeout, max_runtime_idle=max_runtime_idle,
            concurrent_mode=concurrent_mode, channel_factory=channel_factory, queue_length=queue_length,
            queue_timeout=queue_timeout, min_free_sandboxes=min_free_sandboxes, scale_min_ttl=scale_min_ttl,
            scaling=scaling)
        self.reconciler = Reconciler(machine, funclet, use_events=use_events,
                                     startup_retry_interval=startup_retry_interval, failure_wait=failure_wait)
        self.elastic = Elastic(machine, self.reconciler, funclet, min_free_sandboxes=min_free_sandboxes,
                               max_sandbox_idle=max_sandbox_idle, max_transition_time=max_transition_time)
        machine.demand = self.elastic.plan_growth
        self.sandboxes = machine.sandboxes
        self.counters = machine.counters
        self.ready = machine.ready
        # The machine's public API, as the rest of the controller calls it.
        self.take_warm = machine.take_warm
        self.acquire = machine.acquire
        self.release = machine.release
        self.policy_for = machine.groups.policy_for
        self.occupy = machine.occupy
        self.evict = machine.evict
        self.mark = machine.mark
        self.warmed = machine.warmed
        self.stop_idle = machine.stop_idle
        self.recycle = machine.recycle
        self.break_sandbox = machine.break_sandbox
        self.cooled = machine.cooled
        self.reborn_done = machine.reborn_done
        self.invalidate = machine.invalidate
        self.runtime_failure = self.reconciler.runtime_failure
        self._main: asyncio.Task[None] | None = None

    @property
    def node(self) -> NodeResource | None:
        """The funclet's resources as it last reported them."""
        return self.machine.node

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background work: find the funclet's sandboxes, then follow it and tick."""
        self._main = asyncio.get_running_loop().create_task(self._run(), name="controller-pool")

    async def wait_ready(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.ready.wait()

    def begin_drain(self) -> None:
        """Shutdown has begun: serve what is in flight and queued, but grow and pre-warm no more."""
        self.machine.draining = True

    async def close(self) -> None:
        """Stop the background work and every funclet call under way; fail what still waits."""
        self.machine.closed = True
        if self._main is not None:
            self._main.cancel()
        await self.machine.close()
        if self._main is not None:
            await asyncio.gather(self._main, return_exceptions=True)

    async def _run(self) -> None:
        await self.reconciler.first_contact()
        if self.reconciler.use_events:
            self.machine.spawn(self.reconciler.follow_events())
        while True:
            await asyncio.sleep(self.task_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the periodic task must survive anything
                log.exception("pool_tick_failed")

    async def tick(self) -> None:
        """One round of the background task: sync with the funclet, then the elastic sweep."""
        await self.reconciler.sync()
        self.elastic.sweep()

    # ---- views ---------------------------------------------------------------------------------

    def runtimes(self) -> list[dict[str, Any]]:
        """The sandboxes as GET /v1/runtimes lists them."""
        return [sandbox.to_dict() for sandbox in self.sandboxes.values()]

    def resource(self) -> dict[str, Any]:
        """The pool's resources, queue and counters as GET /v1/resource reports them."""
        machine = self.machine
        node = machine.node or NodeResource()
        sandboxes = self.sandboxes.values()
        warm = [s for s in sandboxes if s.phase is Phase.WARM]
        holding = [s for s in sandboxes if s.reserved_mb]
        reserved = {"MilliCPUs": len(holding) * node.Default.MilliCPUs,
                    "Memory": sum(s.reserved_mb for s in holding) * MiB}
        return {
            "Capacity": node.Capacity.to_dict(),
            "Allocatable": node.Allocatable.to_dict(),
            "Used": {"MilliCPUs": sum(s.container.Resource.MilliCPUs for s in warm),
                     "Memory": sum(s.container.Resource.Memory for s in warm)},
            "Reserved": reserved,
            "Marked": reserved,  # the original's name for it
            "Default": node.Default.to_dict(),
            "BaseMemory": node.BaseMemory,
            "Slots": {phase.value: sum(1 for s in sandboxes if s.phase is phase) for phase in Phase},
            "Sandboxes": {"Total": len(self.sandboxes), "Idle": self.elastic.idle_size(),
                          "Max": machine.max_total(), "Free": machine.free_count(), "Growing": machine.growing},
            "Queue": {"Waiting": machine.waiting_count,
                      "Functions": {g.brn: len(g.waiters) for g in machine.waiting.values()}},
            "Counters": dict(self.counters),
        }
