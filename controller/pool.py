"""The controller's pool of slots: one per funclet sandbox, and the state machine that guards them.

States: COLD (free) → WARMUP (the funclet is starting a runtime for one function identity) → WARM
(serving that identity, up to ``quota`` requests at once) → STOPPING (cooldown at the funclet) →
COLD; any of them → BROKEN (the funclet failed us) → reborn at the funclet → COLD. When no slot is
COLD, the least recently used idle WARM slot is evicted: WARM → WARMUP for the new function, its
sandbox reset by the funclet before the warmup. A request is throttled (429) only when every slot has
work in flight.

Every transition is a method that checks its guard first and returns False when it does not hold,
so a late or duplicate event (a stale request, a second timeout on the same slot, a cooldown racing
an invalidate) cannot corrupt a slot. Requests hold a :class:`Lease` that remembers the slot's
generation: a slot that was stopped and reused since then ignores that lease's release, so
in-flight counts never leak and never go below zero.

Everything runs on the event loop; transitions never await, so they are atomic without locks.
The funclet calls that follow a transition (warmup, cooldown, reborn) run as tasks owned by the pool
(not by the request that caused them), so a client hanging up never leaves a slot half-done.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import structlog

from controller.funclet_client import FuncletClient, FuncletError
from controller.runtime_channel import RuntimeChannel
from easyfaas.errors import ServiceError, TooManyRequests
from easyfaas.models import ContainerInfo, NodeResource, ResetRequest, WarmupRequest

log = structlog.get_logger(__name__)

MiB = 1 << 20

# Funclet sandbox states (funclet/sandboxes.py) as the pool reads them.
_FUNCLET_COLD = "cold"
_FUNCLET_IN_USE = frozenset({"warmup", "warm", "stopped"})
_FUNCLET_BUSY = frozenset({"starting", "resetting"})


class SlotState(str, enum.Enum):
    COLD = "cold"
    WARMUP = "warmup"
    WARM = "warm"
    STOPPING = "stopping"
    BROKEN = "broken"


class FunctionInitError(Exception):
    """The runtime started but the function could not be loaded; ``error`` is its error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("errorMessage", "function initialisation failed")))
        self.error = error


@dataclass(eq=False)
class Slot:
    id: str
    container: ContainerInfo
    state: SlotState = SlotState.COLD
    identity: str = ""
    brn: str = ""
    quota: int = 1
    in_flight: int = 0
    generation: int = 0
    memory_mb: int = 0
    channel: RuntimeChannel | None = None
    # The funclet reports the sandbox as ready to be warmed (not being built or reset).
    available: bool = True
    # Invalidated: takes no new requests, is reborn once idle.
    abnormal: bool = False
    warming: asyncio.Task[WarmupOutcome] | None = None
    busy: asyncio.Task[None] | None = None
    changes: int = 0
    state_since: float = field(default_factory=time.monotonic)
    last_access: float = 0.0
    last_warm: float = 0.0
    accepted: int = 0
    rejected: int = 0
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The slot as listed by GET /v1/runtimes."""
        return {
            "RuntimeID": self.id,
            "State": self.state.value,
            "Identity": self.identity,
            "FunctionBrn": self.brn,
            "Concurrency": self.in_flight,
            "Quota": self.quota,
            "MemorySize": self.memory_mb,
            "Available": self.available,
            "Abnormal": self.abnormal,
            "InvokeSocket": self.container.InvokeSocket,
            "Generation": self.generation,
            "AcceptReqCnt": self.accepted,
            "RejectReqCnt": self.rejected,
            "LastAccessTime": _wall_time(self.last_access),
            "LastWarmTime": _wall_time(self.last_warm),
            "StateSince": _wall_time(self.state_since),
            "LastError": self.last_error,
        }


class Lease:
    """One request's hold on a slot; give it back with :meth:`Pool.release`."""

    __slots__ = ("slot", "generation", "cold")

    def __init__(self, slot: Slot, generation: int, cold: bool) -> None:
        self.slot = slot
        self.generation = generation
        self.cold = cold


@dataclass
class WarmupOutcome:
    error: str = ""
    init_error: dict[str, Any] | None = None


WarmupFactory = Callable[[Slot], WarmupRequest]


class Pool:
    def __init__(self, funclet: FuncletClient, *, runtime_alive_timeout: float = 10.0, task_interval: float = 5.0,
                 max_runtime_idle: float = 60.0, max_runner_defunct: float = 90.0, concurrent_mode: bool = True,
                 startup_retry_interval: float = 1.0,
                 channel_factory: Callable[[str, int], RuntimeChannel] = RuntimeChannel) -> None:
        self.funclet = funclet
        self.runtime_alive_timeout = runtime_alive_timeout
        self.task_interval = task_interval
        self.max_runtime_idle = max_runtime_idle
        self.max_runner_defunct = max_runner_defunct
        self.concurrent_mode = concurrent_mode
        self.startup_retry_interval = startup_retry_interval
        self._channel_factory = channel_factory
        self.slots: dict[str, Slot] = {}
        # WARMUP and WARM slots by identity: the warm path is one dict lookup.
        self._by_identity: dict[str, list[Slot]] = {}
        self.node: NodeResource | None = None
        self.ready = asyncio.Event()
        self.counters = {"warm_hit": 0, "cold_start": 0, "throttled": 0, "evicted": 0}
        self._logged_counters: dict[str, int] = dict(self.counters)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._closed = False

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background work: find the funclet's sandboxes, then the periodic task."""
        self._main = asyncio.get_running_loop().create_task(self._run(), name="controller-pool")

    async def wait_ready(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.ready.wait()

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for slot in self.slots.values():
            if slot.channel is not None:
                slot.channel.close()
                slot.channel = None

    async def _run(self) -> None:
        await self._init_slots()
        while True:
            await asyncio.sleep(self.task_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the periodic task must survive anything
                log.exception("pool_tick_failed")

    async def _init_slots(self) -> None:
        attempt = 0
        while True:
            try:
                containers = await self.funclet.list()
                break
            except FuncletError as exc:
                # The funclet may start after the controller: keep asking, say so now and then.
                if attempt % 10 == 0:
                    log.warning("funclet_not_ready", sock=self.funclet.sock_path, error=exc.message, attempt=attempt)
                attempt += 1
                await asyncio.sleep(self.startup_retry_interval)
        await self._refresh_node()
        for info in containers:
            self._adopt(info)
        self.ready.set()
        log.info("pool_ready", slots=len(self.slots),
                 states={s.value: sum(1 for x in self.slots.values() if x.state is s) for s in SlotState})

    def _adopt(self, info: ContainerInfo) -> Slot:
        """A slot for a sandbox the pool has not seen; leftovers of an earlier controller are reset."""
        slot = Slot(id=info.ContainerID, container=info)
        self.slots[slot.id] = slot
        state = info.State
        if state == _FUNCLET_COLD:
            pass
        elif state in _FUNCLET_IN_USE:
            self._set_state(slot, SlotState.STOPPING)
            self._start_reset(slot, "cooldown", f"controller start: sandbox was {state}")
        elif state in _FUNCLET_BUSY:
            slot.available = False
        else:
            self._set_state(slot, SlotState.BROKEN)
            slot.last_error = f"funclet reported state {state!r}"
            self._start_reset(slot, "reborn", slot.last_error)
        return slot

    async def _refresh_node(self) -> None:
        try:
            self.node = await self.funclet.node()
        except FuncletError as exc:
            log.warning("funclet_node_failed", error=exc.message)

    # ---- the request path ----------------------------------------------------------------------

    def take_warm(self, identity: str) -> Lease | None:
        """A WARM slot of ``identity`` with room, marked for one more request; None if there is none."""
        slots = self._by_identity.get(identity)
        if slots:
            for slot in slots:
                if slot.state is SlotState.WARM and slot.in_flight < slot.quota and not slot.abnormal:
                    slot.in_flight += 1
                    slot.accepted += 1
                    slot.last_access = time.monotonic()
                    self.counters["warm_hit"] += 1
                    return Lease(slot, slot.generation, False)
        return None

    async def acquire(self, identity: str, quota: int, make_warmup: WarmupFactory, *, brn: str = "",
                      memory_mb: int = 0) -> Lease:
        """A slot ready to serve ``identity``: warm if possible, else join or start a warmup.

        Raises TooManyRequests when no slot is free, ServiceError when the warmup failed,
        FunctionInitError when the function could not be loaded.
        """
        lease = self.take_warm(identity)
        if lease is not None:
            return lease
        if not self.ready.is_set():
            try:
                await self.wait_ready(self.runtime_alive_timeout)
            except TimeoutError:
                raise ServiceError(
                    f"the funclet at {self.funclet.sock_path} has not answered yet; no sandbox is known"
                ) from None
            lease = self.take_warm(identity)
            if lease is not None:
                return lease
        quota = max(1, quota) if self.concurrent_mode else 1
        for slot in self._by_identity.get(identity, ()):
            if slot.state is SlotState.WARMUP and self.mark(slot, identity):
                lease = Lease(slot, slot.generation, True)
                break
        else:
            lease = self._start_cold(identity, quota, make_warmup, brn, memory_mb)
        await self._await_warmup(lease)
        return lease

    def _start_cold(self, identity: str, quota: int, make_warmup: WarmupFactory, brn: str,
                    memory_mb: int) -> Lease:
        slot = next((s for s in self.slots.values() if self._can_occupy(s)), None)
        victim = self._eviction_candidate() if slot is None else None
        if slot is None and victim is None:
            self._throttle(identity)
            raise TooManyRequests("empty runtime: every slot is busy")
        if not self._memory_admits(memory_mb, freeing_mb=victim.memory_mb if victim is not None else 0):
            self._throttle(identity)
            raise TooManyRequests(f"insufficient memory for a {memory_mb} MB function")
        if victim is not None:
            evicted_brn, idle_s = victim.brn, round(time.monotonic() - victim.last_access, 3)
            if not self.evict(victim, identity, quota, brn=brn, memory_mb=memory_mb):
                raise ServiceError(f"runtime {victim.id} could not be taken over")
            log.info("slot_evicted", slot=victim.id, function=evicted_brn, for_function=brn, idle_s=idle_s)
            self.counters["evicted"] += 1
            slot = victim
        elif slot is None or not self.occupy(slot, identity, quota, brn=brn, memory_mb=memory_mb):
            raise ServiceError("no runtime could be occupied")
        lease = Lease(slot, slot.generation, True)
        try:
            request = make_warmup(slot)
        except BaseException:
            self._unbind(slot)
            self._set_state(slot, SlotState.COLD if victim is None else SlotState.STOPPING)
            if victim is not None:
                self._start_reset(slot, "cooldown", "eviction abandoned")
            raise
        request.ContainerID = slot.id
        request.Identity = identity
        self.counters["cold_start"] += 1
        log.info("cold_start", slot=slot.id, function=brn, evicted=victim is not None)
        slot.warming = self._spawn(self._warmup(slot, slot.generation, request, reset_first=victim is not None))
        return lease

    def _eviction_candidate(self) -> Slot | None:
        """The least recently used WARM slot with nothing in flight (its function is idle)."""
        idle = [s for s in self.slots.values()
                if s.state is SlotState.WARM and s.in_flight == 0 and s.busy is None and not s.abnormal]
        return min(idle, key=lambda s: s.last_access) if idle else None

    def _throttle(self, identity: str) -> None:
        self.counters["throttled"] += 1
        for slot in self._by_identity.get(identity, ()):
            slot.rejected += 1
        log.info("throttled", identity=identity[:16], in_use=sum(1 for s in self.slots.values()
                                                                  if s.state is not SlotState.COLD))

    def _memory_admits(self, memory_mb: int, freeing_mb: int = 0) -> bool:
        node = self.node
        if node is None or node.Allocatable.Memory <= 0 or memory_mb <= 0:
            return True
        marked = sum(s.memory_mb for s in self.slots.values() if s.state in (SlotState.WARMUP, SlotState.WARM))
        return node.Allocatable.Memory - (marked - freeing_mb + memory_mb) * MiB >= 0

    async def _await_warmup(self, lease: Lease) -> None:
        slot = lease.slot
        task = slot.warming
        try:
            if task is None:
                raise ServiceError(f"runtime {slot.id} is warming up without a warmup task")
            # The warmup call has its own timeout; this one only guards against a lost task.
            async with asyncio.timeout(self.runtime_alive_timeout + 5.0):
                outcome = await asyncio.shield(task)
            if outcome.error:
                raise ServiceError(outcome.error)
            if outcome.init_error is not None:
                raise FunctionInitError(outcome.init_error)
            if lease.generation != slot.generation or slot.state is not SlotState.WARM:
                raise ServiceError(f"runtime {slot.id} was recycled while warming up")
        except TimeoutError:
            self.release(lease)
            raise ServiceError(f"runtime {slot.id} not ready after {self.runtime_alive_timeout:g}s") from None
        except BaseException:
            self.release(lease)
            raise

    async def _warmup(self, slot: Slot, generation: int, request: WarmupRequest, *,
                      reset_first: bool = False) -> WarmupOutcome:
        started = time.monotonic()
        try:
            if reset_first:
                # An evicted sandbox still runs the previous function's runtime: reset it first.
                await self.funclet.cooldown(ResetRequest(ContainerID=slot.id, RequestID=request.RequestID,
                                                         Reason=f"evicted for {slot.brn}"))
            response = await self.funclet.warmup(request, timeout=self.runtime_alive_timeout)
        except FuncletError as exc:
            cause = f"warm up runtime {slot.id} failed: {exc.message}"
            log.warning("warmup_failed", slot=slot.id, function=slot.brn, error=exc.message, status=exc.status)
            self.break_slot(slot, generation, cause)
            return WarmupOutcome(error=cause)
        except asyncio.CancelledError:
            self.break_slot(slot, generation, "warmup cancelled")
            raise
        ms = round((time.monotonic() - started) * 1000, 3)
        if response.InitError is not None:
            log.info("warmup_init_error", slot=slot.id, function=slot.brn, ms=ms,
                     error_type=response.InitError.get("errorType"))
            slot.last_error = f"init error: {response.InitError.get('errorMessage', '')}"[:500]
            self.recycle(slot, generation, "function init error")
            return WarmupOutcome(init_error=response.InitError)
        if not self.warmed(slot, generation, response.Container):
            return WarmupOutcome(error=f"runtime {slot.id} was recycled while warming up")
        log.info("warmup_done", slot=slot.id, function=slot.brn, ms=ms)
        return WarmupOutcome()

    def release(self, lease: Lease) -> bool:
        """The request holding ``lease`` is done with its slot."""
        slot = lease.slot
        if lease.generation != slot.generation or slot.in_flight <= 0:
            return False
        slot.in_flight -= 1
        slot.last_access = time.monotonic()
        if slot.abnormal and slot.in_flight == 0 and slot.state is SlotState.WARM:
            self._retire(slot, "invalidated")
        return True

    # ---- guarded transitions -------------------------------------------------------------------

    def _can_occupy(self, slot: Slot) -> bool:
        return (slot.state is SlotState.COLD and not slot.abnormal and slot.available and slot.busy is None
                and not self._closed)

    def occupy(self, slot: Slot, identity: str, quota: int, *, brn: str = "", memory_mb: int = 0) -> bool:
        """COLD → WARMUP for ``identity``, holding one request."""
        if not self._can_occupy(slot):
            return False
        self._bind(slot, identity, quota, brn, memory_mb)
        return True

    def evict(self, slot: Slot, identity: str, quota: int, *, brn: str = "", memory_mb: int = 0) -> bool:
        """WARM and idle → WARMUP for another identity (its sandbox is reset before the warmup)."""
        if (slot.state is not SlotState.WARM or slot.in_flight != 0 or slot.busy is not None or slot.abnormal
                or slot.identity == identity or self._closed):
            return False
        self._unbind(slot)
        self._bind(slot, identity, quota, brn, memory_mb)
        return True

    def _bind(self, slot: Slot, identity: str, quota: int, brn: str, memory_mb: int) -> None:
        slot.generation += 1
        self._set_state(slot, SlotState.WARMUP)
        slot.identity = identity
        slot.brn = brn
        slot.quota = max(1, quota)
        slot.memory_mb = memory_mb
        slot.in_flight = 1
        slot.accepted += 1
        slot.last_access = time.monotonic()
        self._by_identity.setdefault(identity, []).append(slot)

    def mark(self, slot: Slot, identity: str) -> bool:
        """One more request on a WARM or WARMUP slot of the same identity with room for it."""
        if (slot.state not in (SlotState.WARM, SlotState.WARMUP) or slot.identity != identity or slot.abnormal
                or slot.in_flight >= slot.quota):
            return False
        slot.in_flight += 1
        slot.accepted += 1
        slot.last_access = time.monotonic()
        return True

    def warmed(self, slot: Slot, generation: int, container: ContainerInfo) -> bool:
        """WARMUP → WARM once the funclet reports the runtime started."""
        if slot.state is not SlotState.WARMUP or slot.generation != generation:
            return False
        slot.container = container
        slot.channel = self._channel_factory(container.InvokeSocket, slot.quota)
        slot.last_warm = time.monotonic()
        slot.warming = None
        self._set_state(slot, SlotState.WARM)
        return True

    def stop_idle(self, slot: Slot, now: float | None = None) -> bool:
        """WARM, idle and unused for --max-runtime-idle → STOPPING, then cooldown."""
        now = time.monotonic() if now is None else now
        if (slot.state is not SlotState.WARM or slot.in_flight != 0 or slot.busy is not None
                or now - slot.last_access < self.max_runtime_idle):
            return False
        self._unbind(slot)
        self._set_state(slot, SlotState.STOPPING)
        self._start_reset(slot, "cooldown", "idle")
        return True

    def recycle(self, slot: Slot, generation: int, reason: str) -> bool:
        """WARM or WARMUP → STOPPING now, whatever is in flight (its runtime is gone or unusable)."""
        if slot.state not in (SlotState.WARM, SlotState.WARMUP) or slot.generation != generation:
            return False
        log.info("slot_recycled", slot=slot.id, function=slot.brn, reason=reason, in_flight=slot.in_flight)
        self._unbind(slot)
        self._set_state(slot, SlotState.STOPPING)
        self._start_reset(slot, "cooldown", reason)
        return True

    def break_slot(self, slot: Slot, generation: int, reason: str) -> bool:
        """WARMUP or WARM → BROKEN (the funclet failed us); rebuilt by a reborn."""
        if slot.state not in (SlotState.WARM, SlotState.WARMUP) or slot.generation != generation:
            return False
        slot.last_error = reason[:500]
        self._unbind(slot)
        self._set_state(slot, SlotState.BROKEN)
        self._start_reset(slot, "reborn", reason)
        return True

    def cooled(self, slot: Slot, container: ContainerInfo) -> bool:
        """STOPPING → COLD after a successful cooldown."""
        if slot.state is not SlotState.STOPPING:
            return False
        slot.container = container
        slot.available = container.State == _FUNCLET_COLD
        self._set_state(slot, SlotState.COLD)
        if slot.abnormal:
            self._retire(slot, "invalidated")
        return True

    def reborn_done(self, slot: Slot, container: ContainerInfo) -> bool:
        """BROKEN → COLD after a successful reborn."""
        if slot.state is not SlotState.BROKEN:
            return False
        slot.container = container
        slot.available = container.State == _FUNCLET_COLD
        slot.abnormal = False
        self._set_state(slot, SlotState.COLD)
        return True

    def invalidate(self, slot_id: str) -> bool:
        """Take a slot out of service (the API's invalidate); it is reborn as soon as it is idle."""
        slot = self.slots.get(slot_id)
        if slot is None:
            return False
        slot.abnormal = True
        slot.last_error = "invalidated"
        if slot.in_flight == 0 and slot.state in (SlotState.COLD, SlotState.WARM) and slot.busy is None:
            self._retire(slot, "invalidated")
        log.info("slot_invalidated", slot=slot.id, state=slot.state.value, in_flight=slot.in_flight)
        return True

    def _retire(self, slot: Slot, reason: str) -> None:
        """An idle slot → BROKEN, to be reborn (a fresh sandbox)."""
        self._unbind(slot)
        self._set_state(slot, SlotState.BROKEN)
        self._start_reset(slot, "reborn", reason)

    def _unbind(self, slot: Slot) -> None:
        """Detach a slot from its function: later releases of current leases become no-ops."""
        slots = self._by_identity.get(slot.identity)
        if slots is not None:
            try:
                slots.remove(slot)
            except ValueError:
                pass
            if not slots:
                del self._by_identity[slot.identity]
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None
        slot.generation += 1
        slot.in_flight = 0
        slot.identity = ""
        slot.brn = ""
        slot.memory_mb = 0
        slot.warming = None

    def _set_state(self, slot: Slot, state: SlotState) -> None:
        slot.state = state
        slot.changes += 1
        slot.state_since = time.monotonic()

    # ---- funclet resets --------------------------------------------------------------------------

    def _start_reset(self, slot: Slot, op: str, reason: str) -> None:
        if slot.busy is not None or self._closed:
            return
        slot.busy = self._spawn(self._reset(slot, op, reason))

    async def _reset(self, slot: Slot, op: str, reason: str) -> None:
        request = ResetRequest(ContainerID=slot.id, RequestID=str(uuid.uuid4()), Reason=reason)
        call: Callable[[ResetRequest], Awaitable[ContainerInfo]] = (
            self.funclet.cooldown if op == "cooldown" else self.funclet.reborn)
        try:
            try:
                container = await call(request)
            except FuncletError as exc:
                log.warning(f"{op}_failed", slot=slot.id, error=exc.message, status=exc.status)
                slot.last_error = f"{op} failed: {exc.message}"[:500]
                if slot.state is SlotState.STOPPING:
                    self._set_state(slot, SlotState.BROKEN)
                return
            if op == "cooldown":
                self.cooled(slot, container)
            else:
                self.reborn_done(slot, container)
            log.info(f"{op}_done", slot=slot.id, reason=reason, funclet_state=container.State)
        finally:
            slot.busy = None
            # cooled() may have retired the slot while busy was still set: start its reborn now.
            if slot.state is SlotState.BROKEN and slot.abnormal and not self._closed and op == "cooldown":
                self._start_reset(slot, "reborn", "invalidated")

    # ---- periodic work -------------------------------------------------------------------------

    async def tick(self) -> None:
        """One round of the background task: sync with the funclet, cool idle slots, reborn broken ones."""
        await self._sync_with_funclet()
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.state is SlotState.WARM:
                if slot.abnormal and slot.in_flight == 0:
                    self._retire(slot, "invalidated")
                else:
                    self.stop_idle(slot, now)
            elif slot.state is SlotState.BROKEN:
                self._start_reset(slot, "reborn", slot.last_error or "broken")
            elif slot.state is SlotState.COLD and slot.abnormal and slot.busy is None:
                self._retire(slot, "invalidated")
            elif (slot.state in (SlotState.WARMUP, SlotState.STOPPING) and slot.busy is None
                  and (slot.warming is None or slot.warming.done())
                  and now - slot.state_since > self.max_runner_defunct):
                log.warning("slot_stuck", slot=slot.id, state=slot.state.value)
                self._unbind(slot)
                self._set_state(slot, SlotState.BROKEN)
                self._start_reset(slot, "reborn", f"stuck in {slot.state.value}")
        if self.counters != self._logged_counters:
            log.info("counters", **self.counters)
            self._logged_counters = dict(self.counters)

    async def _sync_with_funclet(self) -> None:
        before = {slot.id: slot.changes for slot in self.slots.values()}
        try:
            containers = await self.funclet.list()
        except FuncletError as exc:
            log.warning("funclet_list_failed", error=exc.message)
            return
        await self._refresh_node()
        for info in containers:
            slot = self.slots.get(info.ContainerID)
            if slot is None:
                self._adopt(info)
                log.info("slot_added", slot=info.ContainerID, funclet_state=info.State)
                continue
            if before.get(slot.id) != slot.changes or slot.busy is not None:
                continue  # the slot moved while we were asking: this answer is stale for it
            if slot.state is SlotState.COLD:
                slot.available = info.State == _FUNCLET_COLD
                if info.State in _FUNCLET_IN_USE:
                    # Warm at the funclet but not for us (e.g. our cooldown was lost): reset it.
                    self._set_state(slot, SlotState.STOPPING)
                    self._start_reset(slot, "cooldown", f"funclet reports {info.State} for a cold slot")
            elif slot.state is SlotState.WARM and (info.State != "warm" or info.Identity != slot.identity):
                # The runtime exited, was OOM-killed, or the funclet restarted under us.
                slot.last_error = f"funclet reports {info.State} (runtime gone)"
                self.recycle(slot, slot.generation, slot.last_error)

    # ---- views ---------------------------------------------------------------------------------

    def runtimes(self) -> list[dict[str, Any]]:
        return [slot.to_dict() for slot in self.slots.values()]

    def resource(self) -> dict[str, Any]:
        node = self.node or NodeResource()
        used_mem = sum(s.container.Resource.Memory for s in self.slots.values() if s.state is SlotState.WARM)
        used_cpu = sum(s.container.Resource.MilliCPUs for s in self.slots.values() if s.state is SlotState.WARM)
        marked = [s for s in self.slots.values() if s.state in (SlotState.WARMUP, SlotState.WARM)]
        return {
            "Capacity": node.Capacity.to_dict(),
            "Allocatable": node.Allocatable.to_dict(),
            "Used": {"MilliCPUs": used_cpu, "Memory": used_mem},
            "Marked": {"MilliCPUs": len(marked) * node.Default.MilliCPUs,
                       "Memory": sum(s.memory_mb for s in marked) * MiB},
            "Default": node.Default.to_dict(),
            "BaseMemory": node.BaseMemory,
            "Slots": {state.value: sum(1 for s in self.slots.values() if s.state is state) for state in SlotState},
        }

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))
        return task


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool_task_failed", error=repr(task.exception()))

    return done


def _wall_time(monotonic_value: float) -> str:
    if not monotonic_value:
        return ""
    wall = time.time() - (time.monotonic() - monotonic_value)
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
