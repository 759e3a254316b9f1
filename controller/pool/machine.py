"""The sandbox state machine: the only writer of a sandbox's phase, and the request path through it.

Phases and their ways out::

    COLD ──occupy──▶ WARMUP ──warmed──▶ WARM ──idle / recycle──▶ STOPPING ──cooled──▶ COLD
     │                 │  └─init error / recycle──▶ STOPPING      │  └─evict──▶ WARMUP (another function)
     │                 └─warmup failed──▶ BROKEN ──reborn──▶ COLD └─invalidate / break──▶ BROKEN
     └─shrink──▶ REMOVING ──removed──▶ (gone)   refused / failed──▶ COLD

What the funclet reports moves sandboxes too: a COLD sandbox in use at the funclet is reclaimed
(→ STOPPING, cooldown), one in an unknown state or unavailable too long is condemned (→ BROKEN,
reborn), and a sandbox the funclet destroyed under us is lost (→ COLD, unavailable until rebuilt).

A cooldown or reborn that fails leaves the sandbox BROKEN, and the periodic task reborns BROKEN
sandboxes until the funclet succeeds; a sandbox stuck in WARMUP, STOPPING or REMOVING is declared
BROKEN (:meth:`Machine.unstick`). So no phase is a dead end and no sandbox is ever lost to the pool.

Every transition checks its guard first and returns False when it does not hold, so a late or
duplicate event (a stale request, a second timeout, a cooldown racing an invalidate, a funclet event
about an older life of the sandbox) cannot corrupt a sandbox. Transitions never await, so they are
atomic without locks; the funclet calls that complete them (warmup, cooldown, reborn) run as tasks
owned by the machine, not by the request that caused them, so a client hanging up never leaves a
sandbox half-done.

When no sandbox can serve a request it waits in its function's bounded queue; the queues are served
round-robin, one request per function per turn, whenever capacity frees up. Memory: each sandbox
bound to a function reserves the function's ``MemorySize`` until the funclet confirms the sandbox
is reset, rebuilt or gone; the reservation is a field of the sandbox, so no path can leak it.

The public API (what sync invocations and the pool's collaborators call):

* requests: :meth:`take_warm` (the warm path: no await), :meth:`acquire`, :meth:`release`;
  ``groups.policy_for`` (:mod:`controller.pool.groups`) says which policy a request gets;
* transitions: :meth:`occupy`, :meth:`evict`, :meth:`mark`, :meth:`warmed`, :meth:`stop_idle`,
  :meth:`recycle`, :meth:`break_sandbox`, :meth:`cooled`, :meth:`reborn_done`, :meth:`invalidate`,
  :meth:`retire`, :meth:`reclaim`, :meth:`condemn`, :meth:`reborn`, :meth:`unstick`,
  :meth:`begin_removal` / :meth:`removal_done`, :meth:`lost`, :meth:`forget`, :meth:`prewarm`;
* funclet facts: :meth:`add`, :meth:`set_available`, :meth:`note_exit`, :meth:`record_failure`,
  :meth:`count_ooms`;
* reads: :meth:`can_occupy`, :meth:`free_count`, :meth:`can_grow`, :meth:`max_total`,
  :meth:`allocatable_mb`, :meth:`reserved_mb`, :meth:`memory_admits`;
* the rest: :meth:`dispatch` (serve the queues now), :meth:`spawn` (a task of the pool), :meth:`close`.

The machine calls none of its collaborators: when waiting requests need more sandboxes it calls
:attr:`Machine.demand`, a plain callable its owner installs (the elastic part's planner).

This module is over 600 lines on purpose: the request path, the queue and the transitions write the
same state without awaiting, and splitting them would make the calls between them go both ways.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import Any, Awaitable, Callable

import structlog

from controller.funclet_client import FuncletClient, FuncletError, FuncletUnavailable
from controller.pool.groups import FunctionGroups
from controller.pool.records import (COUNTERS, MiB, FunctionGroup, FunctionInitError, Lease, Phase, Request,
                                     RuntimeFailure, Sandbox, Waiter, WarmupFactory, WarmupOutcome)
from controller.runtime_channel import RuntimeChannel
from controller.scaling import FunctionPolicy
from easyfaas.errors import ServiceError, TooManyRequests
from easyfaas.models import ContainerInfo, FunctionRecord, NodeResource, ResetRequest, SandboxState, WarmupRequest

log = structlog.get_logger(__name__)

_COOLDOWN = "cooldown"
_REBORN = "reborn"


def _no_demand() -> None:
    return None


class Machine:
    """The sandboxes, the function groups and their queues; every phase change goes through here."""

    def __init__(self, funclet: FuncletClient, *, runtime_alive_timeout: float = 15.0,
                 max_runtime_idle: float = 60.0, concurrent_mode: bool = True,
                 channel_factory: Callable[[str, int], RuntimeChannel] = RuntimeChannel,
                 queue_length: int = 100, queue_timeout: float = 0.0, min_free_sandboxes: int = 1,
                 scale_min_ttl: float = 3600.0, scaling: dict[str, dict[str, Any]] | None = None) -> None:
        self.funclet = funclet
        self.runtime_alive_timeout = runtime_alive_timeout
        self.max_runtime_idle = max_runtime_idle
        self.concurrent_mode = concurrent_mode
        self.queue_length = queue_length
        self.queue_timeout = queue_timeout
        self.min_free_sandboxes = min_free_sandboxes
        self._channel_factory = channel_factory
        self.sandboxes: dict[str, Sandbox] = {}
        self.groups = FunctionGroups(scale_min_ttl=scale_min_ttl, scaling=scaling)
        # Groups with queued requests, in round-robin order.
        self.waiting: OrderedDict[str, FunctionGroup] = OrderedDict()
        self.waiting_count = 0
        self._dispatching = False
        self.node: NodeResource | None = None
        self.ready = asyncio.Event()
        self.counters = {name: 0 for name in COUNTERS}
        # Sandboxes the funclet is building for us now, and whether a spare one is wanted.
        self.growing = 0
        self.spare_wanted = False
        self.demand: Callable[[], None] = _no_demand
        self.closed = False
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- requests ------------------------------------------------------------------------------

    def take_warm(self, identity: str) -> Lease | None:
        """A WARM sandbox of ``identity`` with room, marked for one more request; None if there is none."""
        group = self.groups.get(identity)
        if group is None or group.waiters:
            return None  # requests already waiting for this function go first
        limit = group.limit
        if limit is not None and limit.in_flight >= limit.cap:
            return None
        for sandbox in group.sandboxes:
            if sandbox.phase is Phase.WARM and sandbox.in_flight < sandbox.quota and not sandbox.abnormal:
                sandbox.in_flight += 1
                sandbox.accepted += 1
                sandbox.last_access = group.last_used = time.monotonic()
                self.counters["warm_hit"] += 1
                return Lease(sandbox, sandbox.generation, False, limit)
        return None

    async def acquire(self, identity: str, quota: int, make_warmup: WarmupFactory, *, brn: str = "",
                      memory_mb: int = 0, record: FunctionRecord | None = None,
                      policy: FunctionPolicy | None = None, runtime: str = "") -> Lease:
        """A sandbox ready to serve ``identity``: warm if possible, else join or start a warmup, else wait.

        ``record`` (the function's registry record) or ``policy`` give the function's scaling and
        concurrency knobs. Raises TooManyRequests when nothing can serve the request in time,
        ServiceError when the warmup failed, FunctionInitError when the function could not be loaded.
        """
        lease = self.take_warm(identity)
        if lease is not None:
            return lease
        if not self.ready.is_set():
            try:
                async with asyncio.timeout(self.runtime_alive_timeout):
                    await self.ready.wait()
            except TimeoutError:
                raise ServiceError(
                    f"the funclet at {self.funclet.sock_path} has not answered yet; no sandbox is known"
                ) from None
            lease = self.take_warm(identity)
            if lease is not None:
                return lease
        if self.closed:
            raise ServiceError("the controller is shutting down")
        quota = max(1, quota) if self.concurrent_mode else 1
        group = self.groups.for_request(identity, brn, quota, memory_mb, self.groups.policy_for(brn, record, policy))
        group.runtime = runtime or group.runtime
        request = Request(group, make_warmup, memory_mb)
        lease = None if group.waiters else self._try_serve(request)
        if lease is None:
            lease = await self._wait_in_queue(request)
        if lease.warming is not None:
            await self._await_warmup(lease)
        return lease

    def release(self, lease: Lease) -> bool:
        """The request holding ``lease`` is done with its sandbox."""
        if lease.done:
            return False
        lease.done = True
        if lease.limit is not None:
            lease.limit.in_flight -= 1
        sandbox = lease.sandbox
        released = lease.generation == sandbox.generation and sandbox.in_flight > 0
        if released:
            sandbox.in_flight -= 1
            sandbox.last_access = time.monotonic()
            if sandbox.abnormal and sandbox.in_flight == 0 and sandbox.phase is Phase.WARM:
                self.retire(sandbox, "invalidated")
        if self.waiting_count:
            self.dispatch()
        return released

    def _try_serve(self, request: Request) -> Lease | None:
        """Serve a request now if anything can (never awaits); None means it has to wait.

        Order: a warm sandbox with room, a warming sandbox with room, a free cold sandbox, more
        sandboxes (the request waits for them), the least recently used idle sandbox of another
        function. Raises TooManyRequests when the request can never be served.
        """
        group = request.group
        limit = group.limit
        if limit is not None and limit.in_flight >= limit.cap:
            if limit.cap == 0:
                raise self._throttle(group, f"function {group.fkey} has a reserved concurrency of 0: it is throttled")
            request.blocked = f"function {group.fkey} reached its reserved concurrency of {limit.cap}"
            return None
        for phase in (Phase.WARM, Phase.WARMUP):
            for sandbox in group.sandboxes:
                if sandbox.phase is phase and self.mark(sandbox, group.identity):
                    if phase is Phase.WARM:
                        self.counters["warm_hit"] += 1
                    return Lease(sandbox, sandbox.generation, phase is Phase.WARMUP, limit)
        policy = group.policy
        if policy.max_sandboxes and len(group.sandboxes) >= policy.max_sandboxes:
            request.blocked = f"function {group.brn} reached its maximum of {policy.max_sandboxes} sandboxes"
            return None
        allocatable = self.allocatable_mb()
        if allocatable and request.memory_mb > allocatable:
            raise self._throttle(group, f"insufficient memory for a {request.memory_mb} MB function: the box has "
                                        f"{allocatable} MB allocatable")
        sandbox = self._free_sandbox(group.runtime)
        if sandbox is not None and self.memory_admits(request.memory_mb):
            return self._start_cold(request, sandbox)
        if sandbox is None and self.can_grow():
            request.needs_growth = True
            request.blocked = "empty runtime: every slot is busy (more sandboxes are being built)"
            self.spare_wanted = True
            return None
        victim = self._eviction_candidate(group.identity, request.memory_mb)
        if victim is not None:
            return self._start_cold(request, victim)
        if sandbox is not None:
            request.blocked = (f"insufficient memory for a {request.memory_mb} MB function: "
                               f"{self.reserved_mb()} MB of {allocatable} MB allocatable are reserved")
        else:
            request.blocked = "empty runtime: every slot is busy"
        return None

    def _free_sandbox(self, runtime: str = "") -> Sandbox | None:
        """A free sandbox; first one with ``runtime`` pre-started (a standby runtime), then one with
        none (a standby runtime of another kind is wasted when its sandbox is taken)."""
        spare = None
        for sandbox in self.sandboxes.values():
            if self.can_occupy(sandbox):
                standby = sandbox.container.Standby
                if standby and standby == runtime:
                    return sandbox
                if spare is None or (spare.container.Standby and not standby):
                    spare = sandbox
        return spare

    def _start_cold(self, request: Request, sandbox: Sandbox) -> Lease:
        group = request.group
        evicting = sandbox.phase is Phase.WARM
        if evicting:
            evicted_brn, idle_s = sandbox.brn, round(time.monotonic() - sandbox.last_access, 3)
            if not self.evict(sandbox, group.identity, group.quota, brn=group.brn, memory_mb=request.memory_mb):
                raise ServiceError(f"runtime {sandbox.id} could not be taken over")
            log.info("sandbox_evicted", sandbox=sandbox.id, function=evicted_brn, for_function=group.brn,
                     idle_s=idle_s)
            self.counters["evicted"] += 1
        elif not self.occupy(sandbox, group.identity, group.quota, brn=group.brn, memory_mb=request.memory_mb):
            raise ServiceError("no runtime could be occupied")
        try:
            warmup = request.make_warmup(sandbox)
        except BaseException:
            self._unbind(sandbox)
            if evicting:
                self._set_phase(sandbox, Phase.STOPPING)
                self._start_reset(sandbox, _COOLDOWN, "eviction abandoned")
            else:
                sandbox.reserved_mb = 0
                self._set_phase(sandbox, Phase.COLD)
            raise
        warmup.ContainerID = sandbox.id
        warmup.Identity = group.identity
        group.template = warmup
        self.counters["cold_start"] += 1
        log.info("cold_start", sandbox=sandbox.id, function=group.brn, evicted=evicting, memory_mb=request.memory_mb)
        sandbox.warming = self.spawn(self._warmup(sandbox, sandbox.generation, warmup, reset_first=evicting))
        if self.can_grow() and self.free_count() < self.min_free_sandboxes:
            self.spare_wanted = True  # build the next one now, off the request path
            self.demand()
        return Lease(sandbox, sandbox.generation, True, group.limit)

    def _eviction_candidate(self, identity: str, memory_mb: int) -> Sandbox | None:
        """The least recently used idle WARM sandbox of another function whose memory would make
        room, unless its function is owed that many warm sandboxes (scale.min)."""
        now = time.monotonic()
        allocatable = self.allocatable_mb()
        spare = allocatable - self.reserved_mb() - memory_mb if allocatable and memory_mb > 0 else 0
        idle = []
        for sandbox in self.sandboxes.values():
            if (sandbox.phase is not Phase.WARM or sandbox.in_flight != 0 or sandbox.busy is not None
                    or sandbox.abnormal or sandbox.identity == identity or spare + sandbox.reserved_mb < 0):
                continue
            if sandbox.group is not None and self.groups.kept_warm(sandbox.group, now):
                continue
            idle.append(sandbox)
        return min(idle, key=lambda s: s.last_access) if idle else None

    def _throttle(self, group: FunctionGroup, reason: str) -> TooManyRequests:
        self.counters["throttled"] += 1
        for sandbox in group.sandboxes:
            sandbox.rejected += 1
        log.info("throttled", function=group.brn, reason=reason,
                 in_use=sum(1 for s in self.sandboxes.values() if s.phase is not Phase.COLD))
        return TooManyRequests(reason)

    # ---- the queue -----------------------------------------------------------------------------

    async def _wait_in_queue(self, request: Request) -> Lease:
        group = request.group
        timeout = self.queue_timeout
        if timeout <= 0 and request.needs_growth:
            # No queue configured, but a sandbox is being built for this request: wait for it.
            timeout = self.runtime_alive_timeout
        if timeout <= 0:
            raise self._throttle(group, request.blocked or "empty runtime: every slot is busy")
        if len(group.waiters) >= self.queue_length:
            raise self._throttle(group, f"the queue of function {group.brn} is full ({len(group.waiters)} waiting)")
        waiter = Waiter(request, asyncio.get_running_loop().create_future())
        group.waiters.append(waiter)
        if group.identity not in self.waiting:
            self.waiting[group.identity] = group
        self.waiting_count += 1
        self.counters["queued"] += 1
        self.demand()
        try:
            async with asyncio.timeout(timeout):
                lease = await waiter.future
        except TimeoutError:
            lease = self._settled(waiter)
            if lease is None:
                self._unqueue(waiter)
                self.counters["queue_timeout"] += 1
                waited = round(time.monotonic() - waiter.since, 3)
                log.info("queue_wait", function=group.brn, outcome="timeout", wait_s=waited)
                raise self._throttle(group, f"no sandbox became free for {group.brn} within {timeout:g}s "
                                            f"({request.blocked or 'every slot is busy'})") from None
        except BaseException:
            self._unqueue(waiter)
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # served just as the caller went away
            raise
        finally:
            self._unqueue(waiter)
        log.info("queue_wait", function=group.brn, outcome="served", sandbox=lease.sandbox.id,
                 wait_ms=round((time.monotonic() - waiter.since) * 1000, 3))
        return lease

    @staticmethod
    def _settled(waiter: Waiter) -> Lease | None:
        """The lease a waiter was given, even if its wait was cut short right after."""
        future = waiter.future
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None:
                raise exc
            return future.result()
        return None

    def _unqueue(self, waiter: Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        group = waiter.request.group
        try:
            group.waiters.remove(waiter)
        except ValueError:
            pass
        self.waiting_count -= 1
        if not group.waiters:
            self.waiting.pop(group.identity, None)
            self.groups.drop_if_unused(group)

    def dispatch(self) -> None:
        """Give freed capacity to queued requests: one per function per turn, round robin."""
        if self._dispatching or not self.waiting_count or self.closed:
            return
        self._dispatching = True
        try:
            progress = True
            while progress and self.waiting:
                progress = False
                for identity, group in list(self.waiting.items()):
                    while group.waiters and group.waiters[0].future.done():
                        self._unqueue(group.waiters[0])
                    if not group.waiters:
                        continue
                    waiter = group.waiters[0]
                    try:
                        lease = self._try_serve(waiter.request)
                    except Exception as exc:  # noqa: BLE001 - the waiter reports it (429 or not), the pool goes on
                        self._unqueue(waiter)
                        waiter.future.set_exception(exc)
                        progress = True
                        break
                    if lease is None:
                        continue
                    self._unqueue(waiter)
                    waiter.future.set_result(lease)
                    if identity in self.waiting:
                        self.waiting.move_to_end(identity)
                    progress = True
                    break
        finally:
            self._dispatching = False
        self.demand()

    # ---- warmups -------------------------------------------------------------------------------

    async def _await_warmup(self, lease: Lease) -> None:
        sandbox = lease.sandbox
        task = lease.warming
        try:
            if task is None:
                raise ServiceError(f"runtime {sandbox.id} is warming up without a warmup task")
            # The warmup call has its own timeout; this one only guards against a lost task.
            async with asyncio.timeout(self.runtime_alive_timeout + 5.0):
                outcome = await asyncio.shield(task)
            if outcome.error:
                raise ServiceError(outcome.error)
            if outcome.init_error is not None:
                raise FunctionInitError(outcome.init_error)
            if lease.generation != sandbox.generation or sandbox.phase is not Phase.WARM:
                raise ServiceError(f"runtime {sandbox.id} was recycled while warming up")
        except TimeoutError:
            self.release(lease)
            raise ServiceError(f"runtime {sandbox.id} not ready after {self.runtime_alive_timeout:g}s") from None
        except BaseException:
            self.release(lease)
            raise

    async def _warmup(self, sandbox: Sandbox, generation: int, request: WarmupRequest, *,
                      reset_first: bool = False) -> WarmupOutcome:
        started = time.monotonic()
        try:
            if reset_first:
                # An evicted sandbox still runs the previous function's runtime: reset it first.
                await self.funclet.cooldown(ResetRequest(ContainerID=sandbox.id, RequestID=request.RequestID,
                                                         Reason=f"evicted for {sandbox.brn}"))
            response = await self.funclet.warmup(request, timeout=self.runtime_alive_timeout)
        except FuncletError as exc:
            cause = f"warm up runtime {sandbox.id} failed: {exc.message}"
            log.warning("warmup_failed", sandbox=sandbox.id, function=sandbox.brn, error=exc.message,
                        status=exc.status)
            self.counters["warmup_failed"] += 1
            # A funclet that answered has reset the sandbox itself: its memory is free again.
            self.break_sandbox(sandbox, generation, cause, release_memory=not isinstance(exc, FuncletUnavailable))
            return WarmupOutcome(error=cause)
        except asyncio.CancelledError:
            self.break_sandbox(sandbox, generation, "warmup cancelled")
            raise
        ms = round((time.monotonic() - started) * 1000, 3)
        if response.InitError is not None:
            log.info("warmup_init_error", sandbox=sandbox.id, function=sandbox.brn, ms=ms,
                     error_type=response.InitError.get("errorType"))
            sandbox.last_error = f"init error: {response.InitError.get('errorMessage', '')}"[:500]
            self.recycle(sandbox, generation, "function init error")
            return WarmupOutcome(init_error=response.InitError)
        if not self.warmed(sandbox, generation, response.Container):
            failure = sandbox.failures.get(generation)
            if failure is not None:
                return WarmupOutcome(error=f"runtime {sandbox.id} ended right after it started: {failure.detail}")
            return WarmupOutcome(error=f"runtime {sandbox.id} was recycled while warming up")
        log.info("warmup_done", sandbox=sandbox.id, function=sandbox.brn, ms=ms, prewarm=sandbox.prewarmed)
        return WarmupOutcome()

    def prewarm(self, group: FunctionGroup) -> Sandbox | None:
        """COLD → WARMUP with no request, from ``group``'s last warmup (scale.min); None if no free
        sandbox, memory or template allows it."""
        if self.draining or self.closed or group.template is None:
            return None
        sandbox = self._free_sandbox(group.runtime)
        if sandbox is None or not self.memory_admits(group.memory_mb):
            return None
        if not self.occupy(sandbox, group.identity, group.quota, brn=group.brn, memory_mb=group.memory_mb,
                           in_flight=0):
            return None
        request = WarmupRequest.from_dict(group.template.to_dict())
        request.ContainerID = sandbox.id
        request.RequestID = f"prewarm-{uuid.uuid4()}"
        self.counters["prewarm"] += 1
        sandbox.warming = self.spawn(self._warmup(sandbox, sandbox.generation, request))
        return sandbox

    # ---- guarded transitions -------------------------------------------------------------------

    def can_occupy(self, sandbox: Sandbox) -> bool:
        """COLD, healthy, ready at the funclet and with no operation under way."""
        return (sandbox.phase is Phase.COLD and not sandbox.abnormal and sandbox.available and sandbox.busy is None
                and not self.closed)

    def occupy(self, sandbox: Sandbox, identity: str, quota: int, *, brn: str = "", memory_mb: int = 0,
               in_flight: int = 1) -> bool:
        """COLD → WARMUP for ``identity``, holding ``in_flight`` requests (0 for a pre-warm)."""
        if not self.can_occupy(sandbox):
            return False
        self._bind(sandbox, identity, quota, brn, memory_mb, in_flight)
        return True

    def evict(self, sandbox: Sandbox, identity: str, quota: int, *, brn: str = "", memory_mb: int = 0) -> bool:
        """WARM and idle → WARMUP for another identity (its sandbox is reset before the warmup)."""
        if (sandbox.phase is not Phase.WARM or sandbox.in_flight != 0 or sandbox.busy is not None
                or sandbox.abnormal or sandbox.identity == identity or self.closed):
            return False
        self._unbind(sandbox)
        self._bind(sandbox, identity, quota, brn, memory_mb, 1)
        return True

    def _bind(self, sandbox: Sandbox, identity: str, quota: int, brn: str, memory_mb: int, in_flight: int) -> None:
        group = self.groups.for_binding(identity, brn, quota, memory_mb)
        sandbox.generation += 1
        self._set_phase(sandbox, Phase.WARMUP)
        sandbox.identity = identity
        sandbox.brn = brn
        sandbox.quota = max(1, quota)
        sandbox.memory_mb = memory_mb
        sandbox.reserved_mb = memory_mb
        sandbox.in_flight = in_flight
        sandbox.accepted += in_flight
        sandbox.prewarmed = in_flight == 0
        sandbox.last_access = time.monotonic()
        sandbox.group = group
        group.sandboxes.append(sandbox)

    def mark(self, sandbox: Sandbox, identity: str) -> bool:
        """One more request on a WARM or WARMUP sandbox of the same identity with room for it."""
        if (sandbox.phase not in (Phase.WARM, Phase.WARMUP) or sandbox.identity != identity or sandbox.abnormal
                or sandbox.in_flight >= sandbox.quota):
            return False
        sandbox.in_flight += 1
        sandbox.accepted += 1
        sandbox.last_access = time.monotonic()
        if sandbox.group is not None:
            sandbox.group.last_used = sandbox.last_access
        return True

    def warmed(self, sandbox: Sandbox, generation: int, container: ContainerInfo) -> bool:
        """WARMUP → WARM once the funclet reports the runtime started (and still running)."""
        if sandbox.phase is not Phase.WARMUP or sandbox.generation != generation:
            return False
        sandbox.container = container
        sandbox.epoch = container.Epoch
        sandbox.epoch_generation[container.Epoch] = generation
        while len(sandbox.epoch_generation) > 4:
            del sandbox.epoch_generation[next(iter(sandbox.epoch_generation))]
        if container.State == SandboxState.STOPPED:
            # The runtime died between its init report and our hearing of it.
            self.note_exit(sandbox, container)
            self.recycle(sandbox, generation, f"runtime {container.State} right after it started")
            return False
        sandbox.channel = self._channel_factory(container.InvokeSocket, sandbox.quota)
        sandbox.last_warm = time.monotonic()
        sandbox.warming = None
        self._set_phase(sandbox, Phase.WARM)
        if self.waiting_count:
            self.dispatch()
        return True

    def stop_idle(self, sandbox: Sandbox, now: float | None = None) -> bool:
        """WARM, idle and unused for its idle time → STOPPING, then cooldown (unless kept warm)."""
        now = time.monotonic() if now is None else now
        if sandbox.phase is not Phase.WARM or sandbox.in_flight != 0 or sandbox.busy is not None:
            return False
        group = sandbox.group
        idle_limit = self.max_runtime_idle
        if group is not None:
            if group.policy.max_idle is not None:
                idle_limit = group.policy.max_idle
            if self.groups.kept_warm(group, now):
                return False
        if now - sandbox.last_access < idle_limit:
            return False
        self._unbind(sandbox)
        self._set_phase(sandbox, Phase.STOPPING)
        self._start_reset(sandbox, _COOLDOWN, "idle")
        return True

    def recycle(self, sandbox: Sandbox, generation: int, reason: str) -> bool:
        """WARM or WARMUP → STOPPING now, whatever is in flight (its runtime is gone or unusable)."""
        if sandbox.phase not in (Phase.WARM, Phase.WARMUP) or sandbox.generation != generation:
            return False
        log.info("sandbox_recycled", sandbox=sandbox.id, function=sandbox.brn, reason=reason,
                 in_flight=sandbox.in_flight)
        self._unbind(sandbox)
        self._set_phase(sandbox, Phase.STOPPING)
        self._start_reset(sandbox, _COOLDOWN, reason)
        return True

    def break_sandbox(self, sandbox: Sandbox, generation: int, reason: str, *, release_memory: bool = False) -> bool:
        """WARMUP or WARM → BROKEN (the funclet failed us); rebuilt by a reborn."""
        if sandbox.phase not in (Phase.WARM, Phase.WARMUP) or sandbox.generation != generation:
            return False
        sandbox.last_error = reason[:500]
        self._unbind(sandbox)
        if release_memory:
            sandbox.reserved_mb = 0
        self._set_phase(sandbox, Phase.BROKEN)
        self._start_reset(sandbox, _REBORN, reason)
        return True

    def cooled(self, sandbox: Sandbox, container: ContainerInfo) -> bool:
        """STOPPING → COLD after a successful cooldown."""
        if sandbox.phase is not Phase.STOPPING:
            return False
        self._settle_container(sandbox, container)
        self._set_phase(sandbox, Phase.COLD)
        if sandbox.abnormal:
            self.retire(sandbox, "invalidated")
        else:
            self.dispatch()
        return True

    def reborn_done(self, sandbox: Sandbox, container: ContainerInfo) -> bool:
        """BROKEN → COLD after a successful reborn."""
        if sandbox.phase is not Phase.BROKEN:
            return False
        self._settle_container(sandbox, container)
        sandbox.abnormal = False
        self._set_phase(sandbox, Phase.COLD)
        self.dispatch()
        return True

    def _settle_container(self, sandbox: Sandbox, container: ContainerInfo) -> None:
        sandbox.container = container
        sandbox.reserved_mb = 0
        self.count_ooms(sandbox, container)
        self.set_available(sandbox, container.State == SandboxState.COLD)

    def invalidate(self, sandbox_id: str) -> bool:
        """Take a sandbox out of service (the API's invalidate); it is reborn as soon as it is idle."""
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            return False
        sandbox.abnormal = True
        sandbox.last_error = "invalidated"
        if sandbox.busy is None:
            self.retire(sandbox, "invalidated")
        log.info("sandbox_invalidated", sandbox=sandbox.id, phase=sandbox.phase.value, in_flight=sandbox.in_flight)
        return True

    def retire(self, sandbox: Sandbox, reason: str) -> bool:
        """An idle COLD or WARM sandbox → BROKEN, to be reborn (a fresh sandbox)."""
        if sandbox.phase not in (Phase.COLD, Phase.WARM) or sandbox.in_flight != 0:
            return False
        self._unbind(sandbox)
        self._set_phase(sandbox, Phase.BROKEN)
        self._start_reset(sandbox, _REBORN, reason)
        return True

    def reclaim(self, sandbox: Sandbox, reason: str) -> bool:
        """COLD here but in use at the funclet (adopted, or our cooldown was lost) → STOPPING, cooldown."""
        if sandbox.phase is not Phase.COLD or sandbox.busy is not None:
            return False
        self._set_phase(sandbox, Phase.STOPPING)
        self._start_reset(sandbox, _COOLDOWN, reason)
        return True

    def condemn(self, sandbox: Sandbox, reason: str) -> bool:
        """COLD but unusable at the funclet (an unknown state, or unavailable too long) → BROKEN, reborn."""
        if sandbox.phase is not Phase.COLD or sandbox.busy is not None:
            return False
        sandbox.last_error = reason
        self._set_phase(sandbox, Phase.BROKEN)
        self._start_reset(sandbox, _REBORN, reason)
        return True

    def reborn(self, sandbox: Sandbox) -> bool:
        """A BROKEN sandbox's reborn, again (the last one failed), unless one is under way."""
        if sandbox.phase is not Phase.BROKEN or sandbox.busy is not None:
            return False
        self._start_reset(sandbox, _REBORN, sandbox.last_error or "broken")
        return True

    def unstick(self, sandbox: Sandbox) -> bool:
        """WARMUP, STOPPING or REMOVING with no operation under way → BROKEN, reborn.

        The caller decides when a sandbox has been in its phase too long."""
        if (sandbox.phase not in (Phase.WARMUP, Phase.STOPPING, Phase.REMOVING) or sandbox.busy is not None
                or (sandbox.warming is not None and not sandbox.warming.done())):
            return False
        was = sandbox.phase.value
        log.warning("sandbox_stuck", sandbox=sandbox.id, phase=was)
        self._unbind(sandbox)
        self._set_phase(sandbox, Phase.BROKEN)
        self._start_reset(sandbox, _REBORN, f"stuck in {was}")
        return True

    def begin_removal(self, sandboxes: list[Sandbox],
                      remove: Callable[[list[Sandbox]], Awaitable[None]]) -> list[Sandbox]:
        """Free COLD sandboxes → REMOVING; ``remove(chosen)`` (the funclet's shrink) runs as a task
        of the machine and must end with :meth:`removal_done` for each of them."""
        chosen = [sandbox for sandbox in sandboxes if self.can_occupy(sandbox)]
        if not chosen:
            return chosen
        for sandbox in chosen:
            self._set_phase(sandbox, Phase.REMOVING)
        task = self.spawn(remove(chosen))
        for sandbox in chosen:
            sandbox.busy = task
        return chosen

    def removal_done(self, sandbox: Sandbox, removed: bool) -> bool:
        """REMOVING → gone when the funclet removed the sandbox, else back to COLD."""
        sandbox.busy = None
        if sandbox.phase is not Phase.REMOVING:
            return False
        if removed:
            self.forget(sandbox, "pool shrunk")
        else:
            self._set_phase(sandbox, Phase.COLD)
            if sandbox.abnormal:
                self.retire(sandbox, "invalidated")
        return True

    def lost(self, sandbox: Sandbox, reason: str) -> None:
        """The funclet destroyed the sandbox under us and rebuilds it: fail what ran there, wait for it."""
        if sandbox.phase in (Phase.WARM, Phase.WARMUP) and sandbox.generation not in sandbox.failures:
            self.record_failure(sandbox, sandbox.generation, RuntimeFailure.sandbox_lost(reason))
        log.warning("sandbox_lost", sandbox=sandbox.id, function=sandbox.brn, phase=sandbox.phase.value,
                    reason=reason, in_flight=sandbox.in_flight)
        self.counters["sandbox_lost"] += 1
        self._unbind(sandbox)
        sandbox.reserved_mb = 0
        self._set_phase(sandbox, Phase.COLD)
        self.set_available(sandbox, False)

    def forget(self, sandbox: Sandbox, reason: str) -> None:
        """The sandbox is gone for good (removed, or the funclet restarted): drop it."""
        if sandbox.phase in (Phase.WARM, Phase.WARMUP) and sandbox.generation not in sandbox.failures:
            self.record_failure(sandbox, sandbox.generation, RuntimeFailure.sandbox_lost(reason))
        self._unbind(sandbox)
        sandbox.reserved_mb = 0
        sandbox.orphaned = True
        if self.sandboxes.get(sandbox.id) is sandbox:
            del self.sandboxes[sandbox.id]
        log.info("sandbox_forgotten", sandbox=sandbox.id, reason=reason)

    def _unbind(self, sandbox: Sandbox) -> None:
        """Detach a sandbox from its function: later releases of current leases become no-ops."""
        group = sandbox.group
        if group is not None:
            try:
                group.sandboxes.remove(sandbox)
            except ValueError:
                pass
            self.groups.drop_if_unused(group)
        if sandbox.channel is not None:
            sandbox.channel.close()
            sandbox.channel = None
        sandbox.group = None
        sandbox.generation += 1
        sandbox.in_flight = 0
        sandbox.identity = ""
        sandbox.brn = ""
        sandbox.memory_mb = 0
        sandbox.epoch = 0
        sandbox.prewarmed = False
        sandbox.warming = None

    def _set_phase(self, sandbox: Sandbox, phase: Phase) -> None:
        sandbox.phase = phase
        sandbox.changes += 1
        sandbox.phase_since = time.monotonic()

    # ---- facts from the funclet ----------------------------------------------------------------

    def add(self, info: ContainerInfo) -> Sandbox:
        """A COLD sandbox for one the funclet reports and the machine has not seen."""
        sandbox = Sandbox(id=info.ContainerID, container=info, oom_kills_seen=info.OOMKills)
        self.sandboxes[sandbox.id] = sandbox
        return sandbox

    def set_available(self, sandbox: Sandbox, available: bool) -> bool:
        """Whether the funclet has the sandbox ready to be warmed; True when that changed."""
        if available == sandbox.available:
            return False
        sandbox.available = available
        sandbox.unavailable_since = 0.0 if available else time.monotonic()
        return True

    def note_exit(self, sandbox: Sandbox, info: ContainerInfo) -> None:
        """Record the runtime exit ``info`` reports against the binding it ended."""
        exit = info.LastExit
        if exit is not None:
            generation = sandbox.epoch_generation.get(exit.Epoch)
            if generation is not None and generation not in sandbox.failures:
                self.record_failure(sandbox, generation, RuntimeFailure.of_exit(exit))

    def record_failure(self, sandbox: Sandbox, generation: int, failure: RuntimeFailure) -> None:
        """Why the runtime of ``generation`` went away; wakes whoever waits for it."""
        sandbox.failures[generation] = failure
        while len(sandbox.failures) > 4:
            del sandbox.failures[next(iter(sandbox.failures))]
        sandbox.last_error = failure.detail[:500]
        if sandbox.failure_signal is not None:
            sandbox.failure_signal.set()
            sandbox.failure_signal = None

    def count_ooms(self, sandbox: Sandbox, info: ContainerInfo) -> None:
        """Count the OOM kills the funclet reports for the sandbox since it last did."""
        kills = info.OOMKills
        if kills > sandbox.oom_kills_seen:
            self.counters["oom_kill"] += kills - sandbox.oom_kills_seen
            log.warning("oom_killed", sandbox=sandbox.id, function=sandbox.brn or info.FunctionBrn,
                        memory_limit_mb=info.Resource.Memory // MiB, kills=kills - sandbox.oom_kills_seen)
        sandbox.oom_kills_seen = kills  # a rebuilt sandbox's new cgroup counts from 0 again

    # ---- reads ---------------------------------------------------------------------------------

    def allocatable_mb(self) -> int:
        node = self.node
        return node.Allocatable.Memory // MiB if node is not None and node.Allocatable.Memory > 0 else 0

    def reserved_mb(self) -> int:
        return sum(sandbox.reserved_mb for sandbox in self.sandboxes.values())

    def memory_admits(self, memory_mb: int) -> bool:
        allocatable = self.allocatable_mb()
        if not allocatable or memory_mb <= 0:
            return True
        return self.reserved_mb() + memory_mb <= allocatable

    def max_total(self) -> int:
        """Most sandboxes the funclet may hold (its MaxSandboxes; else as many as there are)."""
        node = self.node
        if node is None or node.MaxSandboxes <= 0:
            return len(self.sandboxes)
        return node.MaxSandboxes

    def can_grow(self) -> bool:
        return (not self.draining and not self.closed and self.ready.is_set()
                and len(self.sandboxes) + self.growing < self.max_total())

    def free_count(self) -> int:
        return sum(1 for sandbox in self.sandboxes.values() if self.can_occupy(sandbox))

    # ---- the funclet resets --------------------------------------------------------------------

    def _start_reset(self, sandbox: Sandbox, op: str, reason: str) -> None:
        if sandbox.busy is not None or self.closed or sandbox.orphaned:
            return
        sandbox.busy = self.spawn(self._reset(sandbox, op, reason))

    async def _reset(self, sandbox: Sandbox, op: str, reason: str) -> None:
        request = ResetRequest(ContainerID=sandbox.id, RequestID=str(uuid.uuid4()), Reason=reason)
        call: Callable[[ResetRequest], Awaitable[ContainerInfo]] = (
            self.funclet.cooldown if op == _COOLDOWN else self.funclet.reborn)
        try:
            try:
                container = await call(request)
            except FuncletError as exc:
                log.warning(f"{op}_failed", sandbox=sandbox.id, error=exc.message, status=exc.status)
                sandbox.last_error = f"{op} failed: {exc.message}"[:500]
                if sandbox.phase is Phase.STOPPING:
                    self._set_phase(sandbox, Phase.BROKEN)
                if exc.status == 404 and not sandbox.orphaned:
                    self.forget(sandbox, "the funclet does not know it")
                return
            if op == _COOLDOWN:
                done = self.cooled(sandbox, container)
                self.counters["reset"] += done
            else:
                done = self.reborn_done(sandbox, container)
                self.counters["reborn"] += done
            log.info(f"{op}_done", sandbox=sandbox.id, reason=reason, funclet_state=container.State)
        finally:
            sandbox.busy = None
            # cooled() may have retired the sandbox while busy was still set: start its reborn now.
            if sandbox.phase is Phase.BROKEN and sandbox.abnormal and not self.closed and op == _COOLDOWN:
                self._start_reset(sandbox, _REBORN, "invalidated")

    # ---- tasks and closing ---------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the pool: cancelled by :meth:`close`, its failure logged."""
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool_task_failed", error=repr(task.exception()))

    async def close(self) -> None:
        """Cancel every task, fail every waiter, close every runtime channel."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for group in list(self.waiting.values()):
            for waiter in group.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(ServiceError("the controller is shutting down"))
        for sandbox in self.sandboxes.values():
            if sandbox.channel is not None:
                sandbox.channel.close()
                sandbox.channel = None
