"""Wire models of triggers: what stubs stores and serves (``/v1/functions/<name>/triggers``) and
the change feed trigger daemons follow (``GET /v1/trigger-changes``).

A trigger binds one version of one function (``Qualifier``) to an event source of a ``Type``; its
``Config`` is the type's own (``http``: httptrigger/config.py). Stdlib only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from easyfaas.models import WireModel


class TriggerChangeAction(str, enum.Enum):
    PUT = "Put"        # created or replaced: Trigger holds it
    DELETE = "Delete"  # removed (by itself or with its function or version)


@dataclass
class Trigger(WireModel):
    TriggerId: str = ""
    Type: str = ""
    Qualifier: str = "$LATEST"
    Config: dict[str, Any] = field(default_factory=dict)
    CreatedAt: str = ""
    UpdatedAt: str = ""
    FunctionBrn: str = ""   # versioned: the function and Qualifier this trigger invokes
    FunctionName: str = ""
    Uid: str = ""           # the owner's account id, the caller of every invocation it makes


@dataclass
class TriggerList(WireModel):
    Triggers: list[Trigger] = field(default_factory=list)


@dataclass
class TriggerChange(WireModel):
    Seq: int = 0
    Action: str = TriggerChangeAction.PUT.value
    TriggerId: str = ""
    Trigger: Trigger | None = None


@dataclass
class TriggerChanges(WireModel):
    """Changes after a sequence number. ``Triggers`` (every trigger) comes with a reader's first
    read (``after`` < 0) and whenever ``Lost`` says it missed changes: it replaces what it knew."""

    BootID: str = ""
    Seq: int = 0
    Lost: bool = False
    Changes: list[TriggerChange] = field(default_factory=list)
    Triggers: list[Trigger] | None = None
