"""The durable event queue's interface: what the enqueue, the workers and the records API need
from a backend (``sqlite_backend.SQLiteEventQueue``, ``nats_backend.NatsEventQueue``).

An accepted event is one :class:`InvocationRecord` plus a place in the queue. Its life:

    enqueue ─▶ queued ─lease▶ running ─finish(SUCCEEDED)▶ succeeded
                 ▲              │ ├─retry(delay)──────────▶ queued (the attempt counts)
                 │              │ ├─requeue(delay)────────▶ queued (throttled: the attempt does not count)
                 │              │ └─finish(FAILED|EXPIRED)▶ failed|expired + dead letter
                 └───redrive────────────────────────────────── dead letter (attempts reset)

``Attempts`` counts leases (a crash while running leaves the attempt counted, so an event that
runs twice says so); a finished event is never leased again. A backend may store an event already
leased when a lease is waiting for work as it is enqueued (SQLite's hand-off,
``controller/event_queue/handoff.py``): its record is ``running`` from the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from easyfaas.event_invoke import InvocationRecord, InvocationStatus


@dataclass(frozen=True)
class QueuedEvent:
    """An asynchronous invocation as accepted: everything needed to run it later, in any pod.

    ``traceparent``: the caller's W3C trace context (easyfaas/trace.py); each attempt runs as a new
    span of that trace, a child of the caller's. Empty when the caller sent none (each attempt then
    starts a trace of its own).
    """

    request_id: str
    function: str  # the unqualified BRN: the unit of bounds, filters and per-function settings
    function_arn: str  # the versioned BRN the caller named
    account: str  # the caller's raw account id (the function's owner)
    payload: str
    enqueued_at: float = field(default_factory=time.time)
    callback_url: str = ""
    traceparent: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {"RequestId": self.request_id, "Function": self.function, "FunctionArn": self.function_arn,
                "Account": self.account, "Payload": self.payload, "EnqueuedAt": self.enqueued_at,
                "CallbackUrl": self.callback_url}
        if self.traceparent:
            data["Traceparent"] = self.traceparent
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueuedEvent:
        return cls(request_id=str(data["RequestId"]), function=str(data["Function"]),
                   function_arn=str(data["FunctionArn"]), account=str(data["Account"]),
                   payload=str(data["Payload"]), enqueued_at=float(data["EnqueuedAt"]),
                   callback_url=str(data.get("CallbackUrl") or ""), traceparent=str(data.get("Traceparent") or ""))


@dataclass
class Delivery:
    """A leased event: only its holder may finish, retry or requeue it."""

    event: QueuedEvent
    attempts: int  # including the one this lease starts
    token: Any = None  # the backend's handle (a JetStream message, a lease generation)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as recorded."""

    status: InvocationStatus
    result: str | None = None
    error: dict[str, Any] | None = None
    log_result: str | None = None


@dataclass(frozen=True)
class FunctionDepth:
    queued: int  # queued or running
    oldest_age: float  # seconds since the oldest of them was enqueued


@dataclass(frozen=True)
class QueueDepth:
    total: int
    functions: dict[str, FunctionDepth]

    def to_wire(self) -> dict[str, Any]:
        return {"Total": self.total,
                "Functions": {fn: {"Queued": d.queued, "OldestAgeSeconds": round(d.oldest_age, 3)}
                              for fn, d in sorted(self.functions.items())}}


@dataclass(frozen=True)
class DeadLetter:
    record: InvocationRecord
    event: QueuedEvent

    def to_wire(self) -> dict[str, Any]:
        body = self.record.to_wire()
        body["Payload"] = self.event.payload
        return body


Room = Callable[[str], int]
"""How many more events of a function (its unqualified BRN) the caller can take now."""


class EventQueue(Protocol):
    """A durable queue of asynchronous invocations with their records and dead letters."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, event: QueuedEvent) -> InvocationRecord:
        """Store the event durably before returning.

        Raises EventQueueFull over the per-function or total bound, EventStoreUnavailable when it
        cannot be stored (nothing is then half-written).
        """

    async def lease(self, max_count: int, room: Room, wait: float) -> list[Delivery]:
        """Up to ``max_count`` due events (waiting up to ``wait`` s for one), ``room`` permitting."""

    lease_expires: bool
    """Whether a lease runs out unless :meth:`touch` renews it."""

    async def touch(self, delivery: Delivery) -> None:
        """Keep a long-running lease (the backend may otherwise hand the event out again)."""

    async def finish(self, delivery: Delivery, outcome: Outcome) -> None:
        """Succeeded, or failed/expired (then also a dead letter): the event leaves the queue."""

    async def retry(self, delivery: Delivery, delay: float, outcome: Outcome) -> None:
        """A failed attempt with attempts left: back to the queue, due in ``delay`` s."""

    async def requeue(self, delivery: Delivery, delay: float) -> None:
        """Not run (throttled, or no room): back to the queue without counting the attempt."""

    async def record(self, request_id: str) -> InvocationRecord | None: ...

    async def records(self, *, account: str, function: str | None = None,
                      status: InvocationStatus | None = None, limit: int = 50) -> list[InvocationRecord]:
        """The account's records, newest first."""

    async def dead_letters(self, *, account: str, function: str | None = None,
                           limit: int = 50) -> list[DeadLetter]: ...

    async def dead_letter(self, request_id: str) -> DeadLetter | None: ...

    async def redrive(self, request_id: str) -> InvocationRecord | None:
        """A dead letter back in the queue, attempts reset; None if there is no such dead letter."""

    async def delete_dead_letter(self, request_id: str) -> bool: ...

    async def note_callback(self, request_id: str, outcome: dict[str, Any]) -> None:
        """Record how the delivery to the caller's callback URL went (the record's ``Callback``)."""

    async def depth(self) -> QueueDepth: ...

    async def prune(self) -> int:
        """Drop finished records past their retention (age, then the size bound); how many went."""

