"""The event sources' door into the controller's durable intake: the same invoke pipeline as an
``X-easyfaas-Invoke-Type: event`` request (resolution, ownership, size bound, durable enqueue), and
the records of what was enqueued. Each event carries ``X-easyfaas-Trigger`` (its source's
OpenTelemetry ``faas.trigger``: ``timer``, ``pubsub``) and counts in the trigger metrics."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict

from controller.event_queue import EventQueue
from controller.invoke import Invoker
from easyfaas.http import ACCOUNT_ID, INVOKE_TYPE, INVOKE_TYPE_EVENT
from easyfaas.metrics import TRIGGER_HEADER, TriggerMetrics
from eventsources.source import Refused, SourceTrigger, Submitted

_DUPLICATE = "ResourceConflictException"


class ControllerIntake:
    def __init__(self, invoker: Invoker, queue: EventQueue, faas_triggers: Mapping[str, str]) -> None:
        self.invoker = invoker
        self.queue = queue
        self.faas_triggers = dict(faas_triggers)  # trigger Type → faas.trigger
        self.metrics: TriggerMetrics | None = None  # set when the controller serves /metrics

    async def submit(self, trigger: SourceTrigger, event: str, request_id: str) -> Submitted:
        kind = self.faas_triggers.get(trigger.type, "other")
        headers: CIMultiDict[str] = CIMultiDict({ACCOUNT_ID: trigger.uid, INVOKE_TYPE: INVOKE_TYPE_EVENT,
                                                 TRIGGER_HEADER: kind})
        reply = await self.invoker.invoke(trigger.function_brn, {}, headers, event.encode(), request_id,
                                          body_is_json=True)
        if reply.status == 202:
            if self.metrics is not None:
                self.metrics.fired(kind, trigger.function_brn)
            return Submitted.ACCEPTED
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = {}
        code = str(body.get("Code") or "")
        if reply.status == 409 and code == _DUPLICATE:
            return Submitted.DUPLICATE
        if self.metrics is not None:
            self.metrics.failed(kind, trigger.function_brn)
        raise Refused(reply.status, code or "Unknown", str(body.get("Message") or body.get("Cause") or ""))

    async def known(self, request_id: str) -> bool:
        return await self.queue.record(request_id) is not None

    async def outcome(self, request_id: str) -> dict[str, Any] | None:
        record = await self.queue.record(request_id)
        if record is None or not record.Status.finished:
            return None
        return record.to_wire()
