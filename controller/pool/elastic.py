"""The elastic pool: growing, shrinking, keeping functions warm, and the periodic sweep.

When a request finds no free sandbox and the funclet's ``MaxSandboxes`` allows, the funclet is asked
to build more (in the background; the request waits in its queue), and ``min_free_sandboxes``
spare ones are kept while demand lasts. Cold sandboxes beyond the funclet's idle size that stay
unused for ``max_sandbox_idle`` are removed again. A function's ``scale.min`` keeps that many of
its sandboxes warm. The periodic sweep cools idle sandboxes, reborns broken ones, and declares
BROKEN a sandbox that has been unavailable, or in a transient phase with nothing under way, for
``max_transition_time``.

It changes sandboxes only through the machine's public API, and adopts what the funclet builds
through the reconciler; neither calls back into it (the machine's ``demand`` hook, which the pool
sets to :meth:`Elastic.plan_growth`, is how the machine says requests are waiting).
"""

from __future__ import annotations

import math
import time

import structlog

from controller.funclet_client import FuncletClient, FuncletError
from controller.pool.machine import Machine
from controller.pool.reconcile import Reconciler
from controller.pool.records import Phase, Sandbox

log = structlog.get_logger(__name__)

GROW_BACKOFF = 2.0


class Elastic:
    """Sizes the pool to its demand and sweeps it now and then."""

    def __init__(self, machine: Machine, reconciler: Reconciler, funclet: FuncletClient, *,
                 min_free_sandboxes: int = 1, max_sandbox_idle: float = 60.0,
                 max_transition_time: float = 90.0) -> None:
        self.machine = machine
        self.reconciler = reconciler
        self.funclet = funclet
        self.min_free_sandboxes = min_free_sandboxes
        self.max_sandbox_idle = max_sandbox_idle
        self.max_transition_time = max_transition_time
        self._grow_backoff_until = 0.0
        self._logged_counters: dict[str, int] = dict(machine.counters)

    def idle_size(self) -> int:
        """Sandboxes the funclet keeps built when nothing runs (its IdleSandboxes)."""
        node = self.machine.node
        return node.IdleSandboxes if node is not None and node.IdleSandboxes > 0 else len(self.machine.sandboxes)

    # ---- growing -------------------------------------------------------------------------------

    def plan_growth(self) -> None:
        """Ask the funclet for the sandboxes queued requests (and a spare or so) need."""
        machine = self.machine
        if not machine.can_grow() or time.monotonic() < self._grow_backoff_until:
            return
        need = 0
        for group in machine.waiting.values():
            head = group.waiters[0].request if group.waiters else None
            if head is None or not machine.memory_admits(head.memory_mb):
                continue
            if group.limit is not None and group.limit.in_flight >= group.limit.cap:
                continue
            wanted = math.ceil(len(group.waiters) / max(1, group.quota))
            if group.policy.max_sandboxes:
                wanted = min(wanted, max(0, group.policy.max_sandboxes - len(group.sandboxes)))
            need += wanted
        free = machine.free_count()
        want = need - free - machine.growing
        if machine.spare_wanted:
            want = max(want, self.min_free_sandboxes - free - machine.growing)
            machine.spare_wanted = False
        room = machine.max_total() - len(machine.sandboxes) - machine.growing
        count = min(want, room)
        if count > 0:
            machine.growing += count
            machine.spawn(self._grow(count))

    async def _grow(self, count: int) -> None:
        machine = self.machine
        try:
            response = await self.funclet.grow(count)
        except FuncletError as exc:
            log.warning("grow_failed", count=count, error=exc.message)
            self._grow_backoff_until = time.monotonic() + GROW_BACKOFF
            return
        finally:
            machine.growing -= count
        for info in response.Containers:
            sandbox = machine.sandboxes.get(info.ContainerID)
            if sandbox is None:
                self.reconciler.adopt(info)
            elif sandbox.phase is Phase.COLD and sandbox.busy is None:
                self.reconciler.observe(sandbox, info)
        machine.counters["grown"] += len(response.Containers)
        log.info("pool_grown", requested=count, built=len(response.Containers), sandboxes=len(machine.sandboxes),
                 refused=response.Refused or None)
        if len(response.Containers) < count:
            self._grow_backoff_until = time.monotonic() + GROW_BACKOFF
            await self.reconciler.refresh_node()
        machine.dispatch()

    # ---- shrinking -----------------------------------------------------------------------------

    def shrink_idle(self, now: float) -> None:
        """Remove free sandboxes beyond the idle size that have been unused for max_sandbox_idle."""
        machine = self.machine
        if machine.waiting_count or machine.growing or machine.closed:
            return
        excess = len(machine.sandboxes) - self.idle_size()
        if excess <= 0:
            return
        candidates = [sandbox for sandbox in machine.sandboxes.values()
                      if machine.can_occupy(sandbox) and now - sandbox.phase_since >= self.max_sandbox_idle]
        candidates.sort(key=lambda s: s.index, reverse=True)
        machine.begin_removal(candidates[:excess], self._shrink)

    async def _shrink(self, sandboxes: list[Sandbox]) -> None:
        machine = self.machine
        try:
            response = await self.funclet.shrink([sandbox.id for sandbox in sandboxes])
            removed, refused = set(response.Removed), response.Refused
        except FuncletError as exc:
            log.warning("shrink_failed", sandboxes=[s.id for s in sandboxes], error=exc.message)
            removed, refused = set(), {}
        for sandbox in sandboxes:
            gone = sandbox.id in removed
            if not gone and sandbox.id in refused and sandbox.phase is Phase.REMOVING:
                log.info("shrink_refused", sandbox=sandbox.id, reason=refused[sandbox.id])
            if machine.removal_done(sandbox, gone) and gone:
                machine.counters["shrunk"] += 1
        if removed:
            log.info("pool_shrunk", removed=sorted(removed), sandboxes=len(machine.sandboxes))
        machine.dispatch()

    # ---- keeping functions warm (scale.min) ----------------------------------------------------

    def prewarm(self, now: float) -> None:
        machine = self.machine
        if machine.draining or machine.closed:
            return
        groups = machine.groups
        for group in groups:
            keep = groups.keep(group, now)
            have = groups.warm_count(group)
            while have < keep and group.template is not None:
                sandbox = machine.prewarm(group)
                if sandbox is None:
                    return
                log.info("prewarm_started", sandbox=sandbox.id, function=group.brn, keep=keep, have=have)
                have += 1

    # ---- the periodic sweep --------------------------------------------------------------------

    def sweep(self) -> None:
        """Cool idle sandboxes, reborn broken ones, keep functions warm, shrink back to the idle size."""
        machine = self.machine
        now = time.monotonic()
        warm = sorted((s for s in machine.sandboxes.values() if s.phase is Phase.WARM), key=lambda s: s.last_access)
        for sandbox in warm:
            if sandbox.abnormal and sandbox.in_flight == 0 and sandbox.busy is None:
                machine.retire(sandbox, "invalidated")
            else:
                machine.stop_idle(sandbox, now)
        for sandbox in list(machine.sandboxes.values()):
            phase = sandbox.phase
            if phase is Phase.BROKEN:
                machine.reborn(sandbox)
            elif phase is Phase.COLD and sandbox.abnormal and sandbox.busy is None:
                machine.retire(sandbox, "invalidated")
            elif (phase is Phase.COLD and not sandbox.available and sandbox.busy is None
                  and sandbox.unavailable_since and now - sandbox.unavailable_since > self.max_transition_time):
                log.warning("sandbox_unavailable_too_long", sandbox=sandbox.id, funclet_state=sandbox.container.State)
                machine.condemn(sandbox, f"unavailable at the funclet ({sandbox.container.State}) for too long")
            elif now - sandbox.phase_since > self.max_transition_time:
                machine.unstick(sandbox)
        for group in machine.groups:
            machine.groups.drop_if_unused(group)
        self.prewarm(now)
        self.shrink_idle(now)
        machine.dispatch()
        if machine.counters != self._logged_counters:
            log.info("pool_counters", **machine.counters)
            self._logged_counters = dict(machine.counters)
