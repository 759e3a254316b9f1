"""The plugin interface of an event source, the trigger as a source sees it, and how a source hands
an event to the durable intake.

A new source (a NATS subject, a Redis stream, a webhook) is one class implementing
:class:`EventSource`, registered under its trigger ``Type`` in :func:`eventsources.service.sources_of`;
the supervisor and the other sources do not change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from easyfaas.triggers import Trigger


class TriggerChange(str, enum.Enum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


@dataclass(frozen=True)
class SourceTrigger:
    """The parts of a stored trigger (stubs' ``Trigger`` record) an event source acts on."""

    trigger_id: str
    type: str
    function_brn: str  # versioned: what each event invokes
    uid: str  # the owner's raw account id: the caller of every invocation
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def of(cls, trigger: Trigger) -> SourceTrigger:
        return cls(trigger_id=trigger.TriggerId, type=trigger.Type, function_brn=trigger.FunctionBrn,
                   uid=trigger.Uid, config=dict(trigger.Config or {}), created_at=trigger.CreatedAt,
                   updated_at=trigger.UpdatedAt)


class Submitted(str, enum.Enum):
    ACCEPTED = "accepted"  # durably enqueued now
    DUPLICATE = "duplicate"  # the request id was accepted before (by this or another controller)


class Refused(Exception):
    """The intake did not take the event. ``retryable``: it may later (queue full, store down)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class Intake(Protocol):
    """The controller's durable enqueue of asynchronous invocations, as event sources use it."""

    async def submit(self, trigger: SourceTrigger, event: str, request_id: str) -> Submitted:
        """Return once the event is durable; raise :class:`Refused` when it is not taken.

        ``event`` is JSON text the source made itself (``json.dumps``): it is not parsed again."""

    async def known(self, request_id: str) -> bool:
        """Whether an invocation of this request id was accepted (its record is still kept)."""

    async def outcome(self, request_id: str) -> dict[str, Any] | None:
        """The invocation's record (its wire form) once it has finished, else None."""


class EventSource(Protocol):
    """One kind of event source; it owns every trigger of its ``type``."""

    type: str

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop every trigger's work; what is durable (sessions, fire logs) stays for the next start."""

    async def apply(self, change: TriggerChange, trigger: SourceTrigger) -> None:
        """Take a trigger added, changed (the new record) or removed into account, at once."""

    def status(self, trigger_id: str) -> dict[str, Any] | None:
        """The trigger's live status (``State`` and the source's own fields), None if unknown."""


class ConfigError(ValueError):
    """A trigger's Config is not valid for its type; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
