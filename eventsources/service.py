"""The event sources inside the controller: their lifetime (after the durable queue's, so they
stop before it closes) and the status route.

``GET /v1/event-sources/<trigger id>`` → the trigger's live status (``State`` and the source's
fields); the caller must own the trigger (403), 404 when no source of this controller runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import structlog
from aiohttp import web

from controller.event_queue import EventQueue
from controller.invoke import Invoker
from easyfaas.auth import AUTHENTICATOR
from easyfaas.config import Settings
from easyfaas.errors import InvalidInvokeCaller, ResourceNotFound
from easyfaas.http import ACCOUNT_ID
from easyfaas.keys import PodCredentials
from easyfaas.outbound import OutboundGuard
from easyfaas.tls import client_context
from eventsources.fire_log import FireLog
from eventsources.intake import ControllerIntake
from eventsources.mqtt import MqttSource
from eventsources.mqtt_config import MQTT_TRIGGER_TYPE
from eventsources.schedule import CRON_TRIGGER_TYPE
from eventsources.schedules import ScheduleSource
from eventsources.source import EventSource, Intake
from eventsources.supervisor import EventSourceSupervisor

log = structlog.get_logger(__name__)

EVENT_SOURCES = web.AppKey("event_sources", EventSourceSupervisor)
EVENT_SOURCES_INTAKE = web.AppKey("event_sources_intake", ControllerIntake)

# Each source's trigger Type and its OpenTelemetry faas.trigger (X-easyfaas-Trigger, the metrics).
FAAS_TRIGGERS = {CRON_TRIGGER_TYPE: "timer", MQTT_TRIGGER_TYPE: "pubsub"}


def sources_of(intake: Intake, state_dir: Path, guard: OutboundGuard | None = None) -> dict[str, EventSource]:
    """Every event source by the trigger ``Type`` it serves: a new source is one more entry (and
    one in FAAS_TRIGGERS). ``guard`` checks the brokers the sources connect to."""
    sources: list[EventSource] = [ScheduleSource(intake, FireLog(state_dir / "schedules")),
                                  MqttSource(intake, guard=guard)]
    return {source.type: source for source in sources}


def setup_event_sources(app: web.Application, opts: Settings, invoker: Invoker, queue: EventQueue,
                        registry_base: str) -> None:
    """Run the event sources in this application's lifetime; append after the event queue's context."""
    if not getattr(opts, "event_sources", True):
        return
    state_dir = Path(getattr(opts, "state_dir", "/var/faas/controller"))
    intake = ControllerIntake(invoker, queue, FAAS_TRIGGERS)
    # With keys required, brokers go through the outbound guard, and stubs' feed is read with the pod's key.
    guard = OutboundGuard.of(AUTHENTICATOR in app, getattr(opts, "outbound_allow", ""))
    auth_dir = getattr(opts, "auth_dir", "")
    supervisor = EventSourceSupervisor(f"{registry_base.rstrip('/')}/trigger-changes",
                                       sources_of(intake, state_dir, guard),
                                       credentials=PodCredentials(auth_dir).headers if auth_dir else None,
                                       ssl=client_context(opts))
    app[EVENT_SOURCES] = supervisor
    app[EVENT_SOURCES_INTAKE] = intake

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        await supervisor.start()
        try:
            yield
        finally:
            await supervisor.close()

    app.cleanup_ctx.append(lifetime)
    app.router.add_get("/v1/event-sources/{id}", trigger_status)


async def trigger_status(request: web.Request) -> web.Response:
    supervisor = request.app[EVENT_SOURCES]
    trigger_id = request.match_info["id"]
    trigger = supervisor.triggers.get(trigger_id)
    status = supervisor.status(trigger_id)
    if trigger is None or status is None:
        raise ResourceNotFound(f"no event source runs trigger {trigger_id}")
    caller = request.headers.get(ACCOUNT_ID, "")
    if caller != trigger.uid:
        raise InvalidInvokeCaller(f"the trigger {trigger_id} belongs to another account")
    return web.json_response({"TriggerId": trigger_id, "Type": trigger.type, **status})
