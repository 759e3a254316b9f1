"""The controller's pool of slots (one per funclet sandbox) and the state machine that guards them.

States and their ways out::

    COLD ──occupy──▶ WARMUP ──warmed──▶ WARM ──idle / recycle──▶ STOPPING ──cooled──▶ COLD
     │                 │  └─init error / recycle──▶ STOPPING      │  └─evict──▶ WARMUP (another function)
     │                 └─warmup failed──▶ BROKEN ──reborn──▶ COLD └─invalidate / break──▶ BROKEN
     └─shrink──▶ REMOVING ──removed──▶ (gone)   refused / failed──▶ COLD

A cooldown or reborn that fails leaves the slot BROKEN, and the periodic task reborns BROKEN slots
until the funclet succeeds; a slot stuck in WARMUP, STOPPING or REMOVING with no operation under
way for ``max_runner_defunct`` is declared BROKEN. So no state is a dead end and no sandbox is
ever lost to the pool (the original's ``reclaiming`` slots were, reference §2.11).

Every transition is a method that checks its guard first and returns False when it does not hold,
so a late or duplicate event (a stale request, a second timeout, a cooldown racing an invalidate, a
funclet event about an older life of the sandbox) cannot corrupt a slot. Requests hold a
:class:`Lease` that remembers the slot's generation: releases of a lease whose slot was since
stopped and reused are no-ops, so in-flight counts never leak and never go below zero.

Slots warming or warm for one function identity form a :class:`FunctionGroup`, which also holds the
function's policy (the OpenFaaS scaling labels ``com.openfaas.scale.min|max|zero|zero-duration``
and Lambda's ``ReservedConcurrentExecutions``) and its bounded queue of waiting requests. When no
slot can serve a request, it waits in that queue (bounded in length and time) and the queues are
served round-robin, one request per function per turn, whenever capacity frees up.

Memory: each slot bound to a function reserves the function's ``MemorySize`` from the moment it
is occupied until the funclet confirms the sandbox is reset (or rebuilt, or gone). The reservation
is a field of the slot, not a running total, so no path can leak it; admission compares the sum
with the funclet's allocatable memory.

The pool is elastic: when a request finds no free sandbox and the funclet's ``MaxSandboxes``
allows, the pool asks the funclet to build more (in the background; the request waits in its
queue), and keeps ``min_free_sandboxes`` spare ones while demand lasts. Cold sandboxes beyond the
funclet's idle size that stay unused for ``max_sandbox_idle`` are removed again.

The funclet reports every sandbox change as an event (long poll of ``/v1/funclet/events``): a
runtime that exits or is OOM-killed, or a runner that dies, is known within milliseconds, and
:meth:`Pool.runtime_failure` tells the invoke path what happened to a request's runtime. A new
funclet BootID (the funclet restarted) resets the pool's view; a restarted controller adopts the
funclet's sandboxes and resets those that were in use.

Everything runs on the event loop; transitions never await, so they are atomic without locks.
The funclet calls that follow a transition run as tasks owned by the pool (not by the request that
caused them), so a client hanging up never leaves a slot half-done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
import re
import signal
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

import structlog

from controller.funclet_client import FuncletClient, FuncletError, FuncletUnavailable
from controller.runtime_channel import RuntimeChannel
from easyfaas.config import parse_bool, parse_duration
from easyfaas.errors import ServiceError, TooManyRequests
from easyfaas.models import (ContainerInfo, FuncletEvent, FunctionRecord, NodeResource, ResetRequest, RuntimeExit,
                             WarmupRequest)

log = structlog.get_logger(__name__)

MiB = 1 << 20

# Funclet sandbox states (funclet/sandboxes.py) as the pool reads them.
_FUNCLET_COLD = "cold"
_FUNCLET_IN_USE = frozenset({"warmup", "warm", "stopped"})
_FUNCLET_BUSY = frozenset({"starting", "resetting"})
_FUNCLET_GONE = frozenset({"dead", "starting"})  # the funclet is rebuilding the sandbox by itself
_FUNCLET_REMOVING = "removing"

EVENTS_WAIT = 10.0
GROW_BACKOFF = 2.0
_DIGITS = re.compile(r"(\d+)$")


class SlotState(str, enum.Enum):
    COLD = "cold"
    WARMUP = "warmup"
    WARM = "warm"
    STOPPING = "stopping"
    BROKEN = "broken"
    REMOVING = "removing"


class FunctionInitError(Exception):
    """The runtime started but the function could not be loaded; ``error`` is its error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("errorMessage", "function initialisation failed")))
        self.error = error


@dataclass(frozen=True)
class RuntimeFailure:
    """Why a request's runtime went away: what the caller is told instead of a bare EOF."""

    error_type: str
    detail: str
    oom: bool = False

    def message(self, request_id: str) -> str:
        return f"RequestID: {request_id} Process exited before completing request: {self.detail}"

    @classmethod
    def of_exit(cls, exit: RuntimeExit) -> RuntimeFailure:
        if exit.OOMKilled:
            limit = f" of {exit.MemoryLimit // MiB} MB" if exit.MemoryLimit else ""
            return cls("Runtime.OutOfMemory",
                       f"the function ran out of memory: it went over its memory limit{limit} and was killed "
                       "by the kernel's OOM killer", oom=True)
        if exit.Signal:
            try:
                name = signal.Signals(exit.Signal).name
            except ValueError:
                name = f"signal {exit.Signal}"
            detail = f"the runtime was killed by {name}"
        else:
            detail = f"the runtime exited with status {exit.Code}"
        output = " ".join(exit.Output.split())[-300:]
        if output:
            detail += f"; its last output: {output}"
        return cls("Runtime.ExitError", detail)

    @classmethod
    def sandbox_lost(cls, reason: str) -> RuntimeFailure:
        return cls("Sandbox.Failed", f"the sandbox was lost ({reason}); it is being rebuilt")


@dataclass(frozen=True)
class FunctionPolicy:
    """Per-function scaling and concurrency knobs.

    ``min_warm``: warm sandboxes kept (not cooled down, topped up after a loss) once the function
    has been invoked; ``max_sandboxes``: most sandboxes it may occupy (0: no limit); ``max_idle``:
    its own idle time before cooldown (None: the pool's); ``reserved_concurrency``: most requests
    of the function (all its versions) in flight at once (None: no limit, 0: throttled).
    """

    min_warm: int = 0
    max_sandboxes: int = 0
    max_idle: float | None = None
    reserved_concurrency: int | None = None

    LABEL_MIN = "com.openfaas.scale.min"
    LABEL_MAX = "com.openfaas.scale.max"
    LABEL_ZERO = "com.openfaas.scale.zero"
    LABEL_ZERO_DURATION = "com.openfaas.scale.zero-duration"

    @classmethod
    def of(cls, record: FunctionRecord) -> FunctionPolicy:
        """The policy a registry record asks for: its scaling labels (Tags) and reserved concurrency."""
        knobs = knobs_from_labels(record.Tags)
        reserved = record.Concurrency.ReservedConcurrentExecutions
        if reserved is not None and reserved >= 0:
            knobs["reserved_concurrency"] = reserved
        return cls(**knobs)


def knobs_from_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """FunctionPolicy fields from OpenFaaS scaling labels; a malformed label is logged and ignored."""
    knobs: dict[str, Any] = {}
    try:
        if FunctionPolicy.LABEL_MIN in labels:
            knobs["min_warm"] = _non_negative(int(labels[FunctionPolicy.LABEL_MIN]))
        if FunctionPolicy.LABEL_MAX in labels:
            knobs["max_sandboxes"] = _non_negative(int(labels[FunctionPolicy.LABEL_MAX]))
        if FunctionPolicy.LABEL_ZERO_DURATION in labels:
            knobs["max_idle"] = parse_duration(labels[FunctionPolicy.LABEL_ZERO_DURATION])
        if FunctionPolicy.LABEL_ZERO in labels and not parse_bool(labels[FunctionPolicy.LABEL_ZERO]):
            knobs["min_warm"] = max(1, knobs.get("min_warm", 0))
    except (TypeError, ValueError) as exc:
        log.warning("scaling_label_ignored", error=str(exc))
    return knobs


_SCALING_KEYS = {"min": ("min_warm", int), "max": ("max_sandboxes", int), "zero-duration": ("max_idle", parse_duration),
                 "reserved-concurrency": ("reserved_concurrency", int), "zero": ("zero", parse_bool)}


def parse_scaling(data: Any) -> dict[str, dict[str, Any]]:
    """The controller's per-function overrides: {function name or BRN: {min, max, zero, zero-duration,
    reserved-concurrency}} → FunctionPolicy fields per key. Raises ValueError naming the bad entry."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("function scaling must map function names (or BRNs) to their knobs")
    out: dict[str, dict[str, Any]] = {}
    for name, knobs in data.items():
        if not isinstance(knobs, dict):
            raise ValueError(f"{name}: expected a mapping of knobs, got {type(knobs).__name__}")
        fields: dict[str, Any] = {}
        for key, raw in knobs.items():
            key = str(key).replace("_", "-")
            if key not in _SCALING_KEYS:
                raise ValueError(f"{name}: unknown knob {key!r} (known: {', '.join(sorted(_SCALING_KEYS))})")
            attr, conv = _SCALING_KEYS[key]
            try:
                value = conv(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}.{key}: {exc}") from None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{name}.{key}: must not be negative")
            fields[attr] = value
        if fields.pop("zero", True) is False:
            fields["min_warm"] = max(1, fields.get("min_warm", 0))
        out[str(name)] = fields
    return out


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def function_key(brn: str) -> str:
    """The function a versioned BRN belongs to (its reserved concurrency covers every version)."""
    parts = brn.split(":")
    return ":".join(parts[:7]) if len(parts) == 8 else brn


def function_name(brn: str) -> str:
    parts = brn.split(":")
    return parts[6] if len(parts) >= 7 else brn


class ConcurrencyLimit:
    """Requests of one function in flight, against its reserved concurrency."""

    __slots__ = ("cap", "in_flight")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.in_flight = 0


class FunctionGroup:
    """The slots warming or warm for one function identity, its policy and its queue."""

    __slots__ = ("identity", "brn", "fkey", "policy", "quota", "memory_mb", "slots", "waiters", "template",
                 "limit", "last_used", "superseded", "runtime")

    def __init__(self, identity: str, brn: str) -> None:
        self.identity = identity
        self.brn = brn
        self.fkey = function_key(brn)
        self.policy = FunctionPolicy()
        self.quota = 1
        self.memory_mb = 0
        self.slots: list[Slot] = []
        self.waiters: deque[_Waiter] = deque()
        self.template: WarmupRequest | None = None
        self.limit: ConcurrencyLimit | None = None
        self.last_used = time.monotonic()
        self.superseded = False
        self.runtime = ""  # its runtime's Name: a sandbox with that runtime pre-started is preferred


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
    # Memory (MB) this slot holds against the box's allocatable memory, until the funclet confirms
    # the sandbox is back to its idle size (reset, rebuilt or removed).
    reserved_mb: int = 0
    channel: RuntimeChannel | None = None
    # The funclet reports the sandbox as ready to be warmed (not being built or reset).
    available: bool = True
    # Invalidated: takes no new requests, is reborn once idle.
    abnormal: bool = False
    warming: asyncio.Task[WarmupOutcome] | None = None
    busy: asyncio.Task[None] | None = None
    group: FunctionGroup | None = None
    prewarmed: bool = False
    # The funclet epoch of the current binding, and of recent bindings → their generation.
    epoch: int = 0
    epoch_generation: dict[int, int] = field(default_factory=dict)
    failures: dict[int, RuntimeFailure] = field(default_factory=dict)
    failure_signal: asyncio.Event | None = None
    oom_kills_seen: int = 0
    orphaned: bool = False
    changes: int = 0
    state_since: float = field(default_factory=time.monotonic)
    unavailable_since: float = 0.0
    last_access: float = 0.0
    last_warm: float = 0.0
    accepted: int = 0
    rejected: int = 0
    last_error: str = ""

    @property
    def index(self) -> int:
        m = _DIGITS.search(self.id)
        return int(m.group(1)) if m else 0

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
            "ReservedMemory": self.reserved_mb * MiB,
            "Available": self.available,
            "Abnormal": self.abnormal,
            "Prewarmed": self.prewarmed,
            "InvokeSocket": self.container.InvokeSocket,
            "Generation": self.generation,
            "Epoch": self.epoch,
            "FuncletState": self.container.State,
            "Standby": self.container.Standby if self.state is SlotState.COLD else "",
            "OOMKills": self.oom_kills_seen,
            "AcceptReqCnt": self.accepted,
            "RejectReqCnt": self.rejected,
            "LastAccessTime": _wall_time(self.last_access),
            "LastWarmTime": _wall_time(self.last_warm),
            "StateSince": _wall_time(self.state_since),
            "LastLivenessTime": _unix_time(self.container.LastLiveness),
            "LastError": self.last_error,
        }


class Lease:
    """One request's hold on a slot; give it back with :meth:`Pool.release`."""

    __slots__ = ("slot", "generation", "cold", "limit", "warming", "done")

    def __init__(self, slot: Slot, generation: int, cold: bool, limit: ConcurrencyLimit | None = None) -> None:
        self.slot = slot
        self.generation = generation
        self.cold = cold
        self.limit = limit
        self.warming = slot.warming
        self.done = False
        if limit is not None:
            limit.in_flight += 1


@dataclass
class WarmupOutcome:
    error: str = ""
    init_error: dict[str, Any] | None = None


WarmupFactory = Callable[[Slot], WarmupRequest]


class _Request:
    __slots__ = ("group", "make_warmup", "memory_mb", "blocked", "needs_growth")

    def __init__(self, group: FunctionGroup, make_warmup: WarmupFactory, memory_mb: int) -> None:
        self.group = group
        self.make_warmup = make_warmup
        self.memory_mb = memory_mb
        self.blocked = ""
        self.needs_growth = False


class _Waiter:
    __slots__ = ("request", "future", "since", "queued")

    def __init__(self, request: _Request, future: asyncio.Future[Lease]) -> None:
        self.request = request
        self.future = future
        self.since = time.monotonic()
        self.queued = True


COUNTERS = ("warm_hit", "cold_start", "evicted", "throttled", "queued", "queue_timeout", "warmup_failed", "reset",
            "reborn", "runtime_exit", "oom_kill", "runner_defunct", "sandbox_lost", "grown", "shrunk", "prewarm")


class Pool:
    def __init__(self, funclet: FuncletClient, *, runtime_alive_timeout: float = 10.0, task_interval: float = 5.0,
                 max_runtime_idle: float = 60.0, max_runner_defunct: float = 90.0, concurrent_mode: bool = True,
                 startup_retry_interval: float = 1.0,
                 channel_factory: Callable[[str, int], RuntimeChannel] = RuntimeChannel,
                 queue_length: int = 100, queue_timeout: float = 0.0, min_free_sandboxes: int = 1,
                 max_sandbox_idle: float = 60.0, scale_min_ttl: float = 3600.0,
                 scaling: dict[str, dict[str, Any]] | None = None, use_events: bool = True,
                 failure_wait: float = 0.5) -> None:
        self.funclet = funclet
        self.runtime_alive_timeout = runtime_alive_timeout
        self.task_interval = task_interval
        self.max_runtime_idle = max_runtime_idle
        self.max_runner_defunct = max_runner_defunct
        self.concurrent_mode = concurrent_mode
        self.startup_retry_interval = startup_retry_interval
        self.queue_length = queue_length
        self.queue_timeout = queue_timeout
        self.min_free_sandboxes = min_free_sandboxes
        self.max_sandbox_idle = max_sandbox_idle
        self.scale_min_ttl = scale_min_ttl
        self.scaling = scaling or {}
        self.use_events = use_events
        self.failure_wait = failure_wait
        self._channel_factory = channel_factory
        self.slots: dict[str, Slot] = {}
        # Groups by identity: the warm path is one dict lookup.
        self._groups: dict[str, FunctionGroup] = {}
        self._identity_of_brn: dict[str, str] = {}
        self._limits: dict[str, ConcurrencyLimit] = {}
        # Groups with queued requests, in round-robin order.
        self._waiting: OrderedDict[str, FunctionGroup] = OrderedDict()
        self._waiting_count = 0
        self._dispatching = False
        self.node: NodeResource | None = None
        self._boot_id = ""
        self._event_seq = -1
        self._growing = 0
        self._spare_wanted = False
        self._grow_backoff_until = 0.0
        self.ready = asyncio.Event()
        self.counters = {name: 0 for name in COUNTERS}
        self._logged_counters: dict[str, int] = dict(self.counters)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._closed = False
        self._draining = False

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background work: find the funclet's sandboxes, then follow it and tick."""
        self._main = asyncio.get_running_loop().create_task(self._run(), name="controller-pool")

    async def wait_ready(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self.ready.wait()

    def begin_drain(self) -> None:
        """Shutdown has begun: serve what is in flight and queued, but grow and pre-warm no more."""
        self._draining = True

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for group in list(self._waiting.values()):
            for waiter in group.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(ServiceError("the controller is shutting down"))
        for slot in self.slots.values():
            if slot.channel is not None:
                slot.channel.close()
                slot.channel = None

    async def _run(self) -> None:
        await self._init_slots()
        if self.use_events:
            self._spawn(self._follow_events())
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
                if self.use_events:
                    await self._start_events()
                node = await self.funclet.node()
                containers = await self.funclet.list()
                break
            except FuncletError as exc:
                # The funclet may start after the controller: keep asking, say so now and then.
                if attempt % 10 == 0:
                    log.warning("funclet_not_ready", sock=self.funclet.sock_path, error=exc.message, attempt=attempt)
                attempt += 1
                await asyncio.sleep(self.startup_retry_interval)
        self.node = node
        self._boot_id = node.BootID or self._boot_id
        for info in containers:
            if info.State != _FUNCLET_REMOVING:
                self._adopt(info)
        self.ready.set()
        log.info("pool_ready", slots=len(self.slots), boot_id=self._boot_id, max_sandboxes=self._max_total(),
                 states={s.value: sum(1 for x in self.slots.values() if x.state is s) for s in SlotState})

    async def _start_events(self) -> None:
        try:
            batch = await self.funclet.events(-1, 0)
        except FuncletError as exc:
            if exc.status in (404, 405):
                log.warning("funclet_events_unsupported", detail="falling back to polling the funclet")
                self.use_events = False
                return
            raise
        self._event_seq = batch.Seq
        self._boot_id = batch.BootID

    def _adopt(self, info: ContainerInfo) -> Slot:
        """A slot for a sandbox the pool has not seen; leftovers of an earlier controller are reset."""
        slot = Slot(id=info.ContainerID, container=info, oom_kills_seen=info.OOMKills)
        self.slots[slot.id] = slot
        state = info.State
        if state == _FUNCLET_COLD:
            pass
        elif state in _FUNCLET_IN_USE:
            self._set_state(slot, SlotState.STOPPING)
            self._start_reset(slot, "cooldown", f"adopted: sandbox was {state}")
        elif state in _FUNCLET_BUSY:
            self._set_available(slot, False)
        else:
            self._set_state(slot, SlotState.BROKEN)
            slot.last_error = f"funclet reported state {state!r}"
            self._start_reset(slot, "reborn", slot.last_error)
        return slot

    # ---- the request path ----------------------------------------------------------------------

    def take_warm(self, identity: str) -> Lease | None:
        """A WARM slot of ``identity`` with room, marked for one more request; None if there is none."""
        group = self._groups.get(identity)
        if group is None or group.waiters:
            return None  # requests already waiting for this function go first
        limit = group.limit
        if limit is not None and limit.in_flight >= limit.cap:
            return None
        for slot in group.slots:
            if slot.state is SlotState.WARM and slot.in_flight < slot.quota and not slot.abnormal:
                slot.in_flight += 1
                slot.accepted += 1
                slot.last_access = group.last_used = time.monotonic()
                self.counters["warm_hit"] += 1
                return Lease(slot, slot.generation, False, limit)
        return None

    async def acquire(self, identity: str, quota: int, make_warmup: WarmupFactory, *, brn: str = "",
                      memory_mb: int = 0, record: FunctionRecord | None = None,
                      policy: FunctionPolicy | None = None, runtime: str = "") -> Lease:
        """A slot ready to serve ``identity``: warm if possible, else join or start a warmup, else wait.

        ``record`` (the function's registry record) or ``policy`` give the function's scaling and
        concurrency knobs. Raises TooManyRequests when nothing can serve the request in time,
        ServiceError when the warmup failed, FunctionInitError when the function could not be loaded.
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
        if self._closed:
            raise ServiceError("the controller is shutting down")
        quota = max(1, quota) if self.concurrent_mode else 1
        group = self._group_for(identity, brn, quota, memory_mb, self.policy_for(brn, record, policy))
        group.runtime = runtime or group.runtime
        request = _Request(group, make_warmup, memory_mb)
        lease = None if group.waiters else self._try_serve(request)
        if lease is None:
            lease = await self._wait_in_queue(request)
        if lease.warming is not None:
            await self._await_warmup(lease)
        return lease

    def policy_for(self, brn: str, record: FunctionRecord | None = None,
                   policy: FunctionPolicy | None = None) -> FunctionPolicy:
        """A function's effective policy: its record's (or ``policy``), then the operator's overrides."""
        base = policy if policy is not None else (FunctionPolicy.of(record) if record is not None else None)
        if base is None:
            group = self._groups.get(self._identity_of_brn.get(brn, ""))
            base = group.policy if group is not None else FunctionPolicy()
        if self.scaling:
            knobs = self.scaling.get(brn) or self.scaling.get(function_key(brn)) or self.scaling.get(function_name(brn))
            if knobs:
                base = dataclasses.replace(base, **knobs)
        return base

    def _group_for(self, identity: str, brn: str, quota: int, memory_mb: int, policy: FunctionPolicy) -> FunctionGroup:
        group = self._groups.get(identity)
        if group is None:
            group = self._groups[identity] = FunctionGroup(identity, brn)
        group.quota, group.memory_mb, group.last_used = quota, memory_mb, time.monotonic()
        if group.policy != policy or (policy.reserved_concurrency is not None) != (group.limit is not None):
            group.policy = policy
            self._apply_limit(group)
        if brn:
            previous = self._identity_of_brn.get(brn)
            if previous != identity:
                # A new configuration of the same function version: the old one's sandboxes are no
                # longer worth keeping warm.
                old = self._groups.get(previous or "")
                if old is not None:
                    old.superseded = True
                self._identity_of_brn[brn] = identity
        return group

    def _apply_limit(self, group: FunctionGroup) -> None:
        cap = group.policy.reserved_concurrency
        if cap is None:
            group.limit = None
            return
        limit = self._limits.get(group.fkey)
        if limit is None:
            limit = self._limits[group.fkey] = ConcurrencyLimit(cap)
        limit.cap = cap
        for other in self._groups.values():
            if other.fkey == group.fkey and other.policy.reserved_concurrency is not None:
                other.limit = limit
        group.limit = limit

    def _try_serve(self, request: _Request) -> Lease | None:
        """Serve a request now if anything can (never awaits); None means it has to wait.

        Order: a warm slot with room, a warming slot with room, a free cold slot, more sandboxes
        (the request waits for them), the least recently used idle slot of another function.
        Raises TooManyRequests when the request can never be served.
        """
        group = request.group
        limit = group.limit
        if limit is not None and limit.in_flight >= limit.cap:
            if limit.cap == 0:
                raise self._throttle(group, f"function {group.fkey} has a reserved concurrency of 0: it is throttled")
            request.blocked = f"function {group.fkey} reached its reserved concurrency of {limit.cap}"
            return None
        for state in (SlotState.WARM, SlotState.WARMUP):
            for slot in group.slots:
                if slot.state is state and self.mark(slot, group.identity):
                    if state is SlotState.WARM:
                        self.counters["warm_hit"] += 1
                    return Lease(slot, slot.generation, state is SlotState.WARMUP, limit)
        policy = group.policy
        if policy.max_sandboxes and len(group.slots) >= policy.max_sandboxes:
            request.blocked = f"function {group.brn} reached its maximum of {policy.max_sandboxes} sandboxes"
            return None
        allocatable = self._allocatable_mb()
        if allocatable and request.memory_mb > allocatable:
            raise self._throttle(group, f"insufficient memory for a {request.memory_mb} MB function: the box has "
                                        f"{allocatable} MB allocatable")
        slot = self._free_slot(group.runtime)
        if slot is not None and self._memory_admits(request.memory_mb):
            return self._start_cold(request, slot)
        if slot is None and self._can_grow():
            request.needs_growth = True
            request.blocked = "empty runtime: every slot is busy (more sandboxes are being built)"
            self._spare_wanted = True
            return None
        victim = self._eviction_candidate(group.identity, request.memory_mb)
        if victim is not None:
            return self._start_cold(request, victim)
        if slot is not None:
            request.blocked = (f"insufficient memory for a {request.memory_mb} MB function: "
                               f"{self._reserved_mb()} MB of {allocatable} MB allocatable are reserved")
        else:
            request.blocked = "empty runtime: every slot is busy"
        return None

    def _free_slot(self, runtime: str = "") -> Slot | None:
        """A free slot; first one whose sandbox has ``runtime`` pre-started, then one with none
        (a pre-started runtime of another kind is wasted when its sandbox is taken)."""
        spare = None
        for slot in self.slots.values():
            if self._can_occupy(slot):
                standby = slot.container.Standby
                if standby and standby == runtime:
                    return slot
                if spare is None or (spare.container.Standby and not standby):
                    spare = slot
        return spare

    def _start_cold(self, request: _Request, slot: Slot) -> Lease:
        group = request.group
        evicting = slot.state is SlotState.WARM
        if evicting:
            evicted_brn, idle_s = slot.brn, round(time.monotonic() - slot.last_access, 3)
            if not self.evict(slot, group.identity, group.quota, brn=group.brn, memory_mb=request.memory_mb):
                raise ServiceError(f"runtime {slot.id} could not be taken over")
            log.info("slot_evicted", slot=slot.id, function=evicted_brn, for_function=group.brn, idle_s=idle_s)
            self.counters["evicted"] += 1
        elif not self.occupy(slot, group.identity, group.quota, brn=group.brn, memory_mb=request.memory_mb):
            raise ServiceError("no runtime could be occupied")
        try:
            warmup = request.make_warmup(slot)
        except BaseException:
            self._unbind(slot)
            if evicting:
                self._set_state(slot, SlotState.STOPPING)
                self._start_reset(slot, "cooldown", "eviction abandoned")
            else:
                slot.reserved_mb = 0
                self._set_state(slot, SlotState.COLD)
            raise
        warmup.ContainerID = slot.id
        warmup.Identity = group.identity
        group.template = warmup
        self.counters["cold_start"] += 1
        log.info("cold_start", slot=slot.id, function=group.brn, evicted=evicting, memory_mb=request.memory_mb)
        slot.warming = self._spawn(self._warmup(slot, slot.generation, warmup, reset_first=evicting))
        if self._can_grow() and self._free_count() < self.min_free_sandboxes:
            self._spare_wanted = True  # build the next one now, off the request path
            self._plan_growth()
        return Lease(slot, slot.generation, True, group.limit)

    def _eviction_candidate(self, identity: str, memory_mb: int) -> Slot | None:
        """The least recently used idle WARM slot of another function whose memory would make room,
        unless its function is owed that many warm sandboxes (scale.min)."""
        now = time.monotonic()
        allocatable = self._allocatable_mb()
        spare = allocatable - self._reserved_mb() - memory_mb if allocatable and memory_mb > 0 else 0
        idle = []
        for slot in self.slots.values():
            if (slot.state is not SlotState.WARM or slot.in_flight != 0 or slot.busy is not None or slot.abnormal
                    or slot.identity == identity or spare + slot.reserved_mb < 0):
                continue
            group = slot.group
            if group is not None:
                keep = self._keep(group, now)
                if keep and self._warm_count(group) <= keep:
                    continue
            idle.append(slot)
        return min(idle, key=lambda s: s.last_access) if idle else None

    def _throttle(self, group: FunctionGroup, reason: str) -> TooManyRequests:
        self.counters["throttled"] += 1
        for slot in group.slots:
            slot.rejected += 1
        log.info("throttled", function=group.brn, reason=reason,
                 in_use=sum(1 for s in self.slots.values() if s.state is not SlotState.COLD))
        return TooManyRequests(reason)

    # ---- memory --------------------------------------------------------------------------------

    def _allocatable_mb(self) -> int:
        node = self.node
        return node.Allocatable.Memory // MiB if node is not None and node.Allocatable.Memory > 0 else 0

    def _reserved_mb(self) -> int:
        return sum(slot.reserved_mb for slot in self.slots.values())

    def _memory_admits(self, memory_mb: int, freeing_mb: int = 0) -> bool:
        allocatable = self._allocatable_mb()
        if not allocatable or memory_mb <= 0:
            return True
        return self._reserved_mb() - freeing_mb + memory_mb <= allocatable

    # ---- the queue -----------------------------------------------------------------------------

    async def _wait_in_queue(self, request: _Request) -> Lease:
        group = request.group
        timeout = self.queue_timeout
        if timeout <= 0 and request.needs_growth:
            # No queue configured, but a sandbox is being built for this request: wait for it.
            timeout = self.runtime_alive_timeout
        if timeout <= 0:
            raise self._throttle(group, request.blocked or "empty runtime: every slot is busy")
        if len(group.waiters) >= self.queue_length:
            raise self._throttle(group, f"the queue of function {group.brn} is full ({len(group.waiters)} waiting)")
        waiter = _Waiter(request, asyncio.get_running_loop().create_future())
        group.waiters.append(waiter)
        if group.identity not in self._waiting:
            self._waiting[group.identity] = group
        self._waiting_count += 1
        self.counters["queued"] += 1
        self._plan_growth()
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
        log.info("queue_wait", function=group.brn, outcome="served", slot=lease.slot.id,
                 wait_ms=round((time.monotonic() - waiter.since) * 1000, 3))
        return lease

    @staticmethod
    def _settled(waiter: _Waiter) -> Lease | None:
        """The lease a waiter was given, even if its wait was cut short right after."""
        future = waiter.future
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None:
                raise exc
            return future.result()
        return None

    def _unqueue(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        group = waiter.request.group
        try:
            group.waiters.remove(waiter)
        except ValueError:
            pass
        self._waiting_count -= 1
        if not group.waiters:
            self._waiting.pop(group.identity, None)
            self._drop_group_if_unused(group)

    def _dispatch(self) -> None:
        """Give freed capacity to queued requests: one per function per turn, round robin."""
        if self._dispatching or not self._waiting_count or self._closed:
            return
        self._dispatching = True
        try:
            progress = True
            while progress and self._waiting:
                progress = False
                for identity, group in list(self._waiting.items()):
                    while group.waiters and group.waiters[0].future.done():
                        self._unqueue(group.waiters[0])
                    if not group.waiters:
                        continue
                    waiter = group.waiters[0]
                    try:
                        lease = self._try_serve(waiter.request)
                    except TooManyRequests as exc:
                        self._unqueue(waiter)
                        waiter.future.set_exception(exc)
                        progress = True
                        break
                    except Exception as exc:  # noqa: BLE001 - the waiter reports it, the pool goes on
                        self._unqueue(waiter)
                        waiter.future.set_exception(exc)
                        progress = True
                        break
                    if lease is None:
                        continue
                    self._unqueue(waiter)
                    waiter.future.set_result(lease)
                    if identity in self._waiting:
                        self._waiting.move_to_end(identity)
                    progress = True
                    break
        finally:
            self._dispatching = False
        self._plan_growth()

    # ---- warmups -------------------------------------------------------------------------------

    async def _await_warmup(self, lease: Lease) -> None:
        slot = lease.slot
        task = lease.warming
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
            self.counters["warmup_failed"] += 1
            # A funclet that answered has reset the sandbox itself: its memory is free again.
            self.break_slot(slot, generation, cause, release_memory=not isinstance(exc, FuncletUnavailable))
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
            failure = slot.failures.get(generation)
            if failure is not None:
                return WarmupOutcome(error=f"runtime {slot.id} ended right after it started: {failure.detail}")
            return WarmupOutcome(error=f"runtime {slot.id} was recycled while warming up")
        log.info("warmup_done", slot=slot.id, function=slot.brn, ms=ms, prewarm=slot.prewarmed)
        return WarmupOutcome()

    def release(self, lease: Lease) -> bool:
        """The request holding ``lease`` is done with its slot."""
        if lease.done:
            return False
        lease.done = True
        if lease.limit is not None:
            lease.limit.in_flight -= 1
        slot = lease.slot
        released = lease.generation == slot.generation and slot.in_flight > 0
        if released:
            slot.in_flight -= 1
            slot.last_access = time.monotonic()
            if slot.abnormal and slot.in_flight == 0 and slot.state is SlotState.WARM:
                self._retire(slot, "invalidated")
        if self._waiting_count:
            self._dispatch()
        return released

    # ---- what happened to a runtime ------------------------------------------------------------

    async def runtime_failure(self, lease: Lease, wait: float | None = None) -> RuntimeFailure | None:
        """Why the runtime of ``lease``'s slot went away (OOM kill, exit, lost sandbox), if the funclet
        knows; waits up to ``wait`` seconds for its report. None: nothing known (say "exited")."""
        slot = lease.slot
        failure = slot.failures.get(lease.generation)
        if failure is not None:
            return failure
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.failure_wait if wait is None else wait)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if slot.failure_signal is None:
                slot.failure_signal = asyncio.Event()
            signal_ = slot.failure_signal
            try:
                async with asyncio.timeout(min(remaining, 0.1)):
                    await signal_.wait()
            except TimeoutError:
                pass
            failure = slot.failures.get(lease.generation)
            if failure is not None:
                return failure
            try:
                info = await self.funclet.container(slot.id)
            except (FuncletError, KeyError):
                continue
            self._note_exit(slot, info)
            failure = slot.failures.get(lease.generation)
            if failure is not None:
                return failure

    def _note_exit(self, slot: Slot, info: ContainerInfo) -> None:
        exit = info.LastExit
        if exit is not None:
            generation = slot.epoch_generation.get(exit.Epoch)
            if generation is not None and generation not in slot.failures:
                self._record_failure(slot, generation, RuntimeFailure.of_exit(exit))

    def _record_failure(self, slot: Slot, generation: int, failure: RuntimeFailure) -> None:
        slot.failures[generation] = failure
        while len(slot.failures) > 4:
            del slot.failures[next(iter(slot.failures))]
        slot.last_error = failure.detail[:500]
        if slot.failure_signal is not None:
            slot.failure_signal.set()
            slot.failure_signal = None

    # ---- guarded transitions -------------------------------------------------------------------

    def _can_occupy(self, slot: Slot) -> bool:
        return (slot.state is SlotState.COLD and not slot.abnormal and slot.available and slot.busy is None
                and not self._closed)

    def occupy(self, slot: Slot, identity: str, quota: int, *, brn: str = "", memory_mb: int = 0,
               in_flight: int = 1) -> bool:
        """COLD → WARMUP for ``identity``, holding ``in_flight`` requests (0 for a pre-warm)."""
        if not self._can_occupy(slot):
            return False
        self._bind(slot, identity, quota, brn, memory_mb, in_flight)
        return True

    def evict(self, slot: Slot, identity: str, quota: int, *, brn: str = "", memory_mb: int = 0) -> bool:
        """WARM and idle → WARMUP for another identity (its sandbox is reset before the warmup)."""
        if (slot.state is not SlotState.WARM or slot.in_flight != 0 or slot.busy is not None or slot.abnormal
                or slot.identity == identity or self._closed):
            return False
        self._unbind(slot)
        self._bind(slot, identity, quota, brn, memory_mb, 1)
        return True

    def _bind(self, slot: Slot, identity: str, quota: int, brn: str, memory_mb: int, in_flight: int) -> None:
        group = self._groups.get(identity)
        if group is None:
            group = self._groups[identity] = FunctionGroup(identity, brn)
            group.quota, group.memory_mb = max(1, quota), memory_mb
        slot.generation += 1
        self._set_state(slot, SlotState.WARMUP)
        slot.identity = identity
        slot.brn = brn
        slot.quota = max(1, quota)
        slot.memory_mb = memory_mb
        slot.reserved_mb = memory_mb
        slot.in_flight = in_flight
        slot.accepted += in_flight
        slot.prewarmed = in_flight == 0
        slot.last_access = time.monotonic()
        slot.group = group
        group.slots.append(slot)

    def mark(self, slot: Slot, identity: str) -> bool:
        """One more request on a WARM or WARMUP slot of the same identity with room for it."""
        if (slot.state not in (SlotState.WARM, SlotState.WARMUP) or slot.identity != identity or slot.abnormal
                or slot.in_flight >= slot.quota):
            return False
        slot.in_flight += 1
        slot.accepted += 1
        slot.last_access = time.monotonic()
        if slot.group is not None:
            slot.group.last_used = slot.last_access
        return True

    def warmed(self, slot: Slot, generation: int, container: ContainerInfo) -> bool:
        """WARMUP → WARM once the funclet reports the runtime started (and still running)."""
        if slot.state is not SlotState.WARMUP or slot.generation != generation:
            return False
        slot.container = container
        slot.epoch = container.Epoch
        slot.epoch_generation[container.Epoch] = generation
        while len(slot.epoch_generation) > 4:
            del slot.epoch_generation[next(iter(slot.epoch_generation))]
        if container.State == "stopped":
            # The runtime died between its init report and our hearing of it.
            self._note_exit(slot, container)
            self.recycle(slot, generation, f"runtime {container.State} right after it started")
            return False
        slot.channel = self._channel_factory(container.InvokeSocket, slot.quota)
        slot.last_warm = time.monotonic()
        slot.warming = None
        self._set_state(slot, SlotState.WARM)
        if self._waiting_count:
            self._dispatch()
        return True

    def stop_idle(self, slot: Slot, now: float | None = None) -> bool:
        """WARM, idle and unused for its idle time → STOPPING, then cooldown (unless kept warm)."""
        now = time.monotonic() if now is None else now
        if slot.state is not SlotState.WARM or slot.in_flight != 0 or slot.busy is not None:
            return False
        group = slot.group
        idle_limit = self.max_runtime_idle
        if group is not None:
            if group.policy.max_idle is not None:
                idle_limit = group.policy.max_idle
            keep = self._keep(group, now)
            if keep and self._warm_count(group) <= keep:
                return False
        if now - slot.last_access < idle_limit:
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

    def break_slot(self, slot: Slot, generation: int, reason: str, *, release_memory: bool = False) -> bool:
        """WARMUP or WARM → BROKEN (the funclet failed us); rebuilt by a reborn."""
        if slot.state not in (SlotState.WARM, SlotState.WARMUP) or slot.generation != generation:
            return False
        slot.last_error = reason[:500]
        self._unbind(slot)
        if release_memory:
            slot.reserved_mb = 0
        self._set_state(slot, SlotState.BROKEN)
        self._start_reset(slot, "reborn", reason)
        return True

    def cooled(self, slot: Slot, container: ContainerInfo) -> bool:
        """STOPPING → COLD after a successful cooldown."""
        if slot.state is not SlotState.STOPPING:
            return False
        self._settle_container(slot, container)
        self._set_state(slot, SlotState.COLD)
        if slot.abnormal:
            self._retire(slot, "invalidated")
        else:
            self._dispatch()
        return True

    def reborn_done(self, slot: Slot, container: ContainerInfo) -> bool:
        """BROKEN → COLD after a successful reborn."""
        if slot.state is not SlotState.BROKEN:
            return False
        self._settle_container(slot, container)
        slot.abnormal = False
        self._set_state(slot, SlotState.COLD)
        self._dispatch()
        return True

    def _settle_container(self, slot: Slot, container: ContainerInfo) -> None:
        slot.container = container
        slot.reserved_mb = 0
        self._count_ooms(slot, container)
        self._set_available(slot, container.State == _FUNCLET_COLD)

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

    def _lost(self, slot: Slot, reason: str) -> None:
        """The funclet destroyed the sandbox under us and rebuilds it: fail what ran there, wait for it."""
        if slot.state in (SlotState.WARM, SlotState.WARMUP) and slot.generation not in slot.failures:
            self._record_failure(slot, slot.generation, RuntimeFailure.sandbox_lost(reason))
        log.warning("sandbox_lost", slot=slot.id, function=slot.brn, state=slot.state.value, reason=reason,
                    in_flight=slot.in_flight)
        self.counters["sandbox_lost"] += 1
        self._unbind(slot)
        slot.reserved_mb = 0
        self._set_state(slot, SlotState.COLD)
        self._set_available(slot, False)

    def _forget(self, slot: Slot, reason: str) -> None:
        """The sandbox is gone for good (removed, or the funclet restarted): drop its slot."""
        if slot.state in (SlotState.WARM, SlotState.WARMUP) and slot.generation not in slot.failures:
            self._record_failure(slot, slot.generation, RuntimeFailure.sandbox_lost(reason))
        self._unbind(slot)
        slot.reserved_mb = 0
        slot.orphaned = True
        if self.slots.get(slot.id) is slot:
            del self.slots[slot.id]
        log.info("slot_forgotten", slot=slot.id, reason=reason)

    def _unbind(self, slot: Slot) -> None:
        """Detach a slot from its function: later releases of current leases become no-ops."""
        group = slot.group
        if group is not None:
            try:
                group.slots.remove(slot)
            except ValueError:
                pass
            self._drop_group_if_unused(group)
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None
        slot.group = None
        slot.generation += 1
        slot.in_flight = 0
        slot.identity = ""
        slot.brn = ""
        slot.memory_mb = 0
        slot.epoch = 0
        slot.prewarmed = False
        slot.warming = None

    def _drop_group_if_unused(self, group: FunctionGroup) -> None:
        if (not group.slots and not group.waiters and not self._keep(group, time.monotonic())
                and self._groups.get(group.identity) is group):
            del self._groups[group.identity]
            if self._identity_of_brn.get(group.brn) == group.identity:
                del self._identity_of_brn[group.brn]

    def _set_state(self, slot: Slot, state: SlotState) -> None:
        slot.state = state
        slot.changes += 1
        slot.state_since = time.monotonic()

    def _set_available(self, slot: Slot, available: bool) -> None:
        if available == slot.available:
            return
        slot.available = available
        slot.unavailable_since = 0.0 if available else time.monotonic()

    # ---- keeping functions warm (scale.min) ----------------------------------------------------

    def _keep(self, group: FunctionGroup, now: float) -> int:
        """How many warm sandboxes ``group`` is owed now (0 once superseded or long unused)."""
        if not group.policy.min_warm or group.superseded or now - group.last_used > self.scale_min_ttl:
            return 0
        return group.policy.min_warm

    @staticmethod
    def _warm_count(group: FunctionGroup) -> int:
        return sum(1 for slot in group.slots if slot.state in (SlotState.WARM, SlotState.WARMUP))

    def _prewarm(self, now: float) -> None:
        if self._draining or self._closed:
            return
        for group in list(self._groups.values()):
            keep = self._keep(group, now)
            have = self._warm_count(group)
            while have < keep and group.template is not None:
                slot = self._free_slot(group.runtime)
                if slot is None or not self._memory_admits(group.memory_mb):
                    return
                if not self.occupy(slot, group.identity, group.quota, brn=group.brn, memory_mb=group.memory_mb,
                                   in_flight=0):
                    return
                request = WarmupRequest.from_dict(group.template.to_dict())
                request.ContainerID = slot.id
                request.RequestID = f"prewarm-{uuid.uuid4()}"
                self.counters["prewarm"] += 1
                log.info("prewarm_started", slot=slot.id, function=group.brn, keep=keep, have=have)
                slot.warming = self._spawn(self._warmup(slot, slot.generation, request))
                have += 1

    # ---- the elastic pool ----------------------------------------------------------------------

    def _max_total(self) -> int:
        node = self.node
        if node is None or node.MaxSandboxes <= 0:
            return len(self.slots)
        return node.MaxSandboxes

    def _idle_size(self) -> int:
        node = self.node
        return node.IdleSandboxes if node is not None and node.IdleSandboxes > 0 else len(self.slots)

    def _can_grow(self) -> bool:
        return (not self._draining and not self._closed and self.ready.is_set()
                and len(self.slots) + self._growing < self._max_total())

    def _free_count(self) -> int:
        return sum(1 for slot in self.slots.values() if self._can_occupy(slot))

    def _plan_growth(self) -> None:
        """Ask the funclet for the sandboxes queued requests (and a spare or so) need."""
        if not self._can_grow() or time.monotonic() < self._grow_backoff_until:
            return
        need = 0
        for group in self._waiting.values():
            head = group.waiters[0].request if group.waiters else None
            if head is None or not self._memory_admits(head.memory_mb):
                continue
            if group.limit is not None and group.limit.in_flight >= group.limit.cap:
                continue
            wanted = math.ceil(len(group.waiters) / max(1, group.quota))
            if group.policy.max_sandboxes:
                wanted = min(wanted, max(0, group.policy.max_sandboxes - len(group.slots)))
            need += wanted
        free = self._free_count()
        want = need - free - self._growing
        if self._spare_wanted:
            want = max(want, self.min_free_sandboxes - free - self._growing)
            self._spare_wanted = False
        room = self._max_total() - len(self.slots) - self._growing
        count = min(want, room)
        if count > 0:
            self._growing += count
            self._spawn(self._grow(count))

    async def _grow(self, count: int) -> None:
        try:
            response = await self.funclet.grow(count)
        except FuncletError as exc:
            log.warning("grow_failed", count=count, error=exc.message)
            self._grow_backoff_until = time.monotonic() + GROW_BACKOFF
            return
        finally:
            self._growing -= count
        added = 0
        for info in response.Containers:
            slot = self.slots.get(info.ContainerID)
            if slot is None:
                self._adopt(info)
                added += 1
            elif slot.state is SlotState.COLD and slot.busy is None:
                self._observe(slot, info)
        self.counters["grown"] += len(response.Containers)
        log.info("pool_grown", requested=count, built=len(response.Containers), sandboxes=len(self.slots),
                 refused=response.Refused or None)
        if len(response.Containers) < count:
            self._grow_backoff_until = time.monotonic() + GROW_BACKOFF
            await self._refresh_node()
        self._dispatch()

    def _shrink_idle(self, now: float) -> None:
        if self._waiting_count or self._growing or self._closed:
            return
        excess = len(self.slots) - self._idle_size()
        if excess <= 0:
            return
        candidates = [slot for slot in self.slots.values()
                      if self._can_occupy(slot) and now - slot.state_since >= self.max_sandbox_idle]
        candidates.sort(key=lambda s: s.index, reverse=True)
        chosen = candidates[:excess]
        if not chosen:
            return
        for slot in chosen:
            self._set_state(slot, SlotState.REMOVING)
        task = self._spawn(self._shrink(chosen))
        for slot in chosen:
            slot.busy = task

    async def _shrink(self, slots: list[Slot]) -> None:
        try:
            response = await self.funclet.shrink([slot.id for slot in slots])
            removed, refused = set(response.Removed), response.Refused
        except FuncletError as exc:
            log.warning("shrink_failed", slots=[s.id for s in slots], error=exc.message)
            removed, refused = set(), {}
        for slot in slots:
            slot.busy = None
            if slot.state is not SlotState.REMOVING:
                continue
            if slot.id in removed:
                self._forget(slot, "pool shrunk")
                self.counters["shrunk"] += 1
            else:
                if slot.id in refused:
                    log.info("shrink_refused", slot=slot.id, reason=refused[slot.id])
                self._set_state(slot, SlotState.COLD)
                if slot.abnormal:
                    self._retire(slot, "invalidated")
        if removed:
            log.info("pool_shrunk", removed=sorted(removed), sandboxes=len(self.slots))
        self._dispatch()

    # ---- funclet resets ------------------------------------------------------------------------

    def _start_reset(self, slot: Slot, op: str, reason: str) -> None:
        if slot.busy is not None or self._closed or slot.orphaned:
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
                if exc.status == 404 and not slot.orphaned:
                    self._forget(slot, "the funclet does not know it")
                return
            if op == "cooldown":
                done = self.cooled(slot, container)
                self.counters["reset"] += done
            else:
                done = self.reborn_done(slot, container)
                self.counters["reborn"] += done
            log.info(f"{op}_done", slot=slot.id, reason=reason, funclet_state=container.State)
        finally:
            slot.busy = None
            # cooled() may have retired the slot while busy was still set: start its reborn now.
            if slot.state is SlotState.BROKEN and slot.abnormal and not self._closed and op == "cooldown":
                self._start_reset(slot, "reborn", "invalidated")

    # ---- following the funclet -----------------------------------------------------------------

    async def _follow_events(self) -> None:
        """Long-poll the funclet's events; resynchronise from its list after a gap or a restart."""
        broken = False
        while not self._closed:
            failure = ""
            try:
                batch = await self.funclet.events(self._event_seq, EVENTS_WAIT)
            except FuncletError as exc:
                if exc.status in (404, 405):
                    log.warning("funclet_events_unsupported", detail="falling back to polling the funclet")
                    return
                failure = exc.message
            except Exception as exc:  # noqa: BLE001 - the stream must outlive any one failure
                log.exception("funclet_events_broken")
                failure = str(exc) or type(exc).__name__
            if failure:
                if not broken:
                    log.warning("funclet_events_failed", error=failure)
                broken = True
                await asyncio.sleep(self.startup_retry_interval)
                continue
            if broken or batch.Lost or batch.BootID != self._boot_id:
                broken = False
                self._event_seq = batch.Seq
                await self._sync_with_funclet(boot_id=batch.BootID)
                continue
            self._event_seq = batch.Seq
            for event in batch.Events:
                try:
                    self._on_event(event)
                except Exception:  # noqa: BLE001 - one odd event must not stop the stream
                    log.exception("funclet_event_failed", type=event.Type, container=event.ContainerID)
            self._dispatch()

    def _on_event(self, event: FuncletEvent) -> None:
        slot = self.slots.get(event.ContainerID)
        info = event.Container
        if event.Type == "removed":
            if slot is not None and slot.state is not SlotState.REMOVING and slot.busy is None:
                self._forget(slot, event.Reason or "removed by the funclet")
            return
        if slot is None:
            if info.State != _FUNCLET_REMOVING:
                self._adopt(info)
                log.info("slot_added", slot=info.ContainerID, funclet_state=info.State)
            return
        if event.Type == "exited" and event.Exit is not None:
            self._runtime_exited(slot, event.Exit)
            self._count_ooms(slot, info)
            return
        if event.Type == "defunct":
            self.counters["runner_defunct"] += 1
            log.warning("runner_defunct", slot=slot.id, function=slot.brn, reason=event.Reason)
            generation = slot.epoch_generation.get(info.Epoch)
            if generation is not None and generation not in slot.failures:
                self._record_failure(slot, generation,
                                     RuntimeFailure.sandbox_lost(event.Reason or "its runner stopped answering"))
        self._observe(slot, info)

    def _runtime_exited(self, slot: Slot, exit: RuntimeExit) -> None:
        failure = RuntimeFailure.of_exit(exit)
        self.counters["runtime_exit"] += 1
        log.info("runtime_exited", slot=slot.id, function=slot.brn, code=exit.Code, signal=exit.Signal,
                 oom=exit.OOMKilled, memory_limit_mb=exit.MemoryLimit // MiB)
        generation = slot.epoch_generation.get(exit.Epoch)
        if generation is not None and generation not in slot.failures:
            self._record_failure(slot, generation, failure)
        if exit.Epoch and slot.epoch == exit.Epoch and slot.state is SlotState.WARM:
            self.recycle(slot, slot.generation, failure.detail)

    def _count_ooms(self, slot: Slot, info: ContainerInfo) -> None:
        kills = info.OOMKills
        if kills > slot.oom_kills_seen:
            self.counters["oom_kill"] += kills - slot.oom_kills_seen
            log.warning("oom_killed", slot=slot.id, function=slot.brn or info.FunctionBrn,
                        memory_limit_mb=info.Resource.Memory // MiB, kills=kills - slot.oom_kills_seen)
        slot.oom_kills_seen = kills  # a rebuilt sandbox's new cgroup counts from 0 again

    def _observe(self, slot: Slot, info: ContainerInfo) -> None:
        """Bring a slot in line with what the funclet says about its sandbox (event or list)."""
        if info.Epoch and info.Epoch < slot.container.Epoch:
            return  # about an older life of the sandbox
        self._count_ooms(slot, info)
        if slot.busy is not None or slot.warming is not None:
            return  # our own operation is under way: its answer is authoritative
        funclet_state = info.State
        if slot.state is SlotState.COLD:
            slot.container = info
            if funclet_state in _FUNCLET_IN_USE:
                # Warm at the funclet but not for us (e.g. our cooldown was lost): reset it.
                self._set_state(slot, SlotState.STOPPING)
                self._start_reset(slot, "cooldown", f"funclet reports {funclet_state} for a cold slot")
                return
            became_available = funclet_state == _FUNCLET_COLD and not slot.available
            self._set_available(slot, funclet_state == _FUNCLET_COLD)
            if became_available:
                self._dispatch()
        elif slot.state is SlotState.WARM:
            if info.Epoch and slot.epoch and info.Epoch == slot.epoch and funclet_state in ("warmup", "warm"):
                return  # a late report of the warmup that made the slot WARM
            if funclet_state == "warm" and info.Identity == slot.identity and (not info.Epoch or not slot.epoch):
                return
            slot.container = info
            if funclet_state in _FUNCLET_GONE:
                self._lost(slot, f"funclet reports {funclet_state}")
            else:
                self._note_exit(slot, info)
                slot.last_error = f"funclet reports {funclet_state} (runtime gone)"
                self.recycle(slot, slot.generation, slot.last_error)

    async def _refresh_node(self) -> None:
        try:
            self.node = await self.funclet.node()
        except FuncletError as exc:
            log.warning("funclet_node_failed", error=exc.message)

    async def _sync_with_funclet(self, boot_id: str = "") -> None:
        before = {slot.id: slot.changes for slot in self.slots.values()}
        try:
            node = await self.funclet.node()
            containers = await self.funclet.list()
        except FuncletError as exc:
            log.warning("funclet_list_failed", error=exc.message)
            return
        self.node = node
        boot = node.BootID or boot_id
        if boot and self._boot_id and boot != self._boot_id:
            self._reset_view(containers, boot)
            return
        self._boot_id = boot or self._boot_id
        seen = set()
        for info in containers:
            seen.add(info.ContainerID)
            slot = self.slots.get(info.ContainerID)
            if slot is None:
                if info.State != _FUNCLET_REMOVING:
                    self._adopt(info)
                    log.info("slot_added", slot=info.ContainerID, funclet_state=info.State)
                continue
            if before.get(slot.id) != slot.changes:
                continue  # the slot moved while we were asking: this answer is stale for it
            self._observe(slot, info)
        for slot in list(self.slots.values()):
            if (slot.id not in seen and before.get(slot.id) == slot.changes and slot.busy is None
                    and slot.warming is None and slot.state is not SlotState.REMOVING):
                self._forget(slot, "the funclet no longer has it")
        self._dispatch()

    def _reset_view(self, containers: list[ContainerInfo], boot_id: str) -> None:
        """The funclet restarted: every sandbox we knew is gone; adopt the new ones."""
        log.warning("funclet_restarted", old_boot_id=self._boot_id, boot_id=boot_id, slots=len(self.slots))
        for slot in list(self.slots.values()):
            self._forget(slot, "the funclet restarted")
        self._boot_id = boot_id
        for info in containers:
            if info.State != _FUNCLET_REMOVING:
                self._adopt(info)
        self._dispatch()

    # ---- periodic work -------------------------------------------------------------------------

    async def tick(self) -> None:
        """One round of the background task: sync with the funclet, cool idle slots, reborn broken ones,
        keep functions warm, shrink the pool back to its idle size."""
        await self._sync_with_funclet()
        now = time.monotonic()
        warm = sorted((s for s in self.slots.values() if s.state is SlotState.WARM), key=lambda s: s.last_access)
        for slot in warm:
            if slot.abnormal and slot.in_flight == 0 and slot.busy is None:
                self._retire(slot, "invalidated")
            else:
                self.stop_idle(slot, now)
        for slot in list(self.slots.values()):
            if slot.state is SlotState.BROKEN:
                self._start_reset(slot, "reborn", slot.last_error or "broken")
            elif slot.state is SlotState.COLD and slot.abnormal and slot.busy is None:
                self._retire(slot, "invalidated")
            elif (slot.state is SlotState.COLD and not slot.available and slot.busy is None
                  and slot.unavailable_since and now - slot.unavailable_since > self.max_runner_defunct):
                log.warning("slot_unavailable_too_long", slot=slot.id, funclet_state=slot.container.State)
                slot.last_error = f"unavailable at the funclet ({slot.container.State}) for too long"
                self._set_state(slot, SlotState.BROKEN)
                self._start_reset(slot, "reborn", slot.last_error)
            elif (slot.state in (SlotState.WARMUP, SlotState.STOPPING, SlotState.REMOVING) and slot.busy is None
                  and (slot.warming is None or slot.warming.done())
                  and now - slot.state_since > self.max_runner_defunct):
                log.warning("slot_stuck", slot=slot.id, state=slot.state.value)
                was = slot.state.value
                self._unbind(slot)
                self._set_state(slot, SlotState.BROKEN)
                self._start_reset(slot, "reborn", f"stuck in {was}")
        for group in list(self._groups.values()):
            self._drop_group_if_unused(group)
        self._prewarm(now)
        self._shrink_idle(now)
        self._dispatch()
        if self.counters != self._logged_counters:
            log.info("pool_counters", **self.counters)
            self._logged_counters = dict(self.counters)

    # ---- views ---------------------------------------------------------------------------------

    def runtimes(self) -> list[dict[str, Any]]:
        return [slot.to_dict() for slot in self.slots.values()]

    def resource(self) -> dict[str, Any]:
        node = self.node or NodeResource()
        slots = self.slots.values()
        warm = [s for s in slots if s.state is SlotState.WARM]
        holding = [s for s in slots if s.reserved_mb]
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
            "Slots": {state.value: sum(1 for s in slots if s.state is state) for state in SlotState},
            "Sandboxes": {"Total": len(self.slots), "Idle": self._idle_size(), "Max": self._max_total(),
                          "Free": self._free_count(), "Growing": self._growing},
            "Queue": {"Waiting": self._waiting_count,
                      "Functions": {g.brn: len(g.waiters) for g in self._waiting.values()}},
            "Counters": dict(self.counters),
        }

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(_forget_task(self._tasks))
        return task


def _forget_task(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool_task_failed", error=repr(task.exception()))

    return done


def _wall_time(monotonic_value: float) -> str:
    if not monotonic_value:
        return ""
    return _unix_time(time.time() - (time.monotonic() - monotonic_value))


def _unix_time(value: float) -> str:
    if not value:
        return ""
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
