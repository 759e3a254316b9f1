"""The pool's records: the controller's view of one sandbox, its phase, leases, function groups.

Plain data: nothing here calls the funclet, the state machine or anything else that changes state.
Only :mod:`controller.pool.machine` writes :attr:`Sandbox.phase`.
"""

from __future__ import annotations

import asyncio
import enum
import re
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from controller.runtime_channel import RuntimeChannel
from controller.scaling import FunctionPolicy
from easyfaas.brn import function_of
from easyfaas.models import ContainerInfo, RuntimeExit, WarmupRequest

MiB = 1 << 20

_DIGITS = re.compile(r"(\d+)$")

COUNTERS = ("warm_hit", "cold_start", "evicted", "throttled", "queued", "queue_timeout", "warmup_failed", "reset",
            "reborn", "runtime_exit", "oom_kill", "runner_defunct", "sandbox_lost", "grown", "shrunk", "prewarm")


class Phase(str, enum.Enum):
    """Where a sandbox is in the controller's state machine (the funclet's own is ``SandboxState``)."""

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
    def out_of_memory(cls, memory_limit: int) -> RuntimeFailure:
        """The kernel's OOM killer ended the runtime; ``memory_limit`` in bytes (0: not known)."""
        limit = f" of {memory_limit // MiB} MB" if memory_limit else ""
        return cls("Runtime.OutOfMemory",
                   f"the function ran out of memory: it went over its memory limit{limit} and was killed "
                   "by the kernel's OOM killer", oom=True)

    @classmethod
    def of_exit(cls, exit: RuntimeExit) -> RuntimeFailure:
        if exit.OOMKilled:
            return cls.out_of_memory(exit.MemoryLimit)
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


class ConcurrencyLimit:
    """Requests of one function in flight, against its reserved concurrency."""

    __slots__ = ("cap", "in_flight")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.in_flight = 0


class FunctionGroup:
    """The sandboxes warming or warm for one function identity, its policy and its queue.

    ``fkey`` is the unqualified BRN: a reserved concurrency covers every version of the function.
    """

    __slots__ = ("identity", "brn", "fkey", "policy", "quota", "memory_mb", "sandboxes", "waiters", "template",
                 "limit", "last_used", "superseded", "runtime")

    def __init__(self, identity: str, brn: str) -> None:
        self.identity = identity
        self.brn = brn
        self.fkey = function_of(brn)[0]
        self.policy = FunctionPolicy()
        self.quota = 1
        self.memory_mb = 0
        self.sandboxes: list[Sandbox] = []
        self.waiters: deque[Waiter] = deque()
        self.template: WarmupRequest | None = None
        self.limit: ConcurrencyLimit | None = None
        self.last_used = time.monotonic()
        self.superseded = False
        self.runtime = ""  # its runtime's Name: a sandbox with that runtime pre-started is preferred


@dataclass(eq=False)
class Sandbox:
    """The controller's view of one funclet sandbox (``container`` is the funclet's last report)."""

    id: str
    container: ContainerInfo
    phase: Phase = Phase.COLD
    identity: str = ""
    brn: str = ""
    quota: int = 1
    in_flight: int = 0
    generation: int = 0
    memory_mb: int = 0
    # Memory (MB) this sandbox holds against the box's allocatable memory, until the funclet confirms
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
    phase_since: float = field(default_factory=time.monotonic)
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
        """The sandbox as listed by GET /v1/runtimes (the original's field names)."""
        return {
            "RuntimeID": self.id,
            "State": self.phase.value,
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
            "Standby": self.container.Standby if self.phase is Phase.COLD else "",
            "OOMKills": self.oom_kills_seen,
            "AcceptReqCnt": self.accepted,
            "RejectReqCnt": self.rejected,
            "LastAccessTime": _wall_time(self.last_access),
            "LastWarmTime": _wall_time(self.last_warm),
            "StateSince": _wall_time(self.phase_since),
            "LastLivenessTime": _unix_time(self.container.LastLiveness),
            "LastError": self.last_error,
        }


class Lease:
    """One request's hold on a sandbox; give it back with :meth:`Machine.release`.

    It remembers the sandbox's generation: a release after the sandbox was stopped and reused is a
    no-op, so in-flight counts never leak and never go below zero.
    """

    __slots__ = ("sandbox", "generation", "cold", "limit", "warming", "done", "oom_kills")

    def __init__(self, sandbox: Sandbox, generation: int, cold: bool, limit: ConcurrencyLimit | None = None) -> None:
        self.sandbox = sandbox
        self.generation = generation
        self.oom_kills = sandbox.oom_kills_seen  # the cgroup's OOM kills known when the request began
        self.cold = cold
        self.limit = limit
        self.warming = sandbox.warming
        self.done = False
        if limit is not None:
            limit.in_flight += 1


@dataclass
class WarmupOutcome:
    error: str = ""
    init_error: dict[str, Any] | None = None


WarmupFactory = Callable[[Sandbox], WarmupRequest]


class Request:
    """A request for a sandbox of ``group``; ``blocked`` says why it could not be served yet."""

    __slots__ = ("group", "make_warmup", "memory_mb", "blocked", "needs_growth")

    def __init__(self, group: FunctionGroup, make_warmup: WarmupFactory, memory_mb: int) -> None:
        self.group = group
        self.make_warmup = make_warmup
        self.memory_mb = memory_mb
        self.blocked = ""
        self.needs_growth = False


class Waiter:
    """A request waiting in its function's queue for a lease."""

    __slots__ = ("request", "future", "since", "queued")

    def __init__(self, request: Request, future: asyncio.Future[Lease]) -> None:
        self.request = request
        self.future = future
        self.since = time.monotonic()
        self.queued = True


def _wall_time(monotonic_value: float) -> str:
    if not monotonic_value:
        return ""
    return _unix_time(time.time() - (time.monotonic() - monotonic_value))


def _unix_time(value: float) -> str:
    if not value:
        return ""
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
