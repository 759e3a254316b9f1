"""The stubs trigger API: one set of routes for every trigger type.

``POST /v1/functions/<name>/triggers`` ``{"Type", "Qualifier", "Config"}`` → 201 with the trigger;
``GET /v1/functions/<name>/triggers``; ``GET|PUT|DELETE /v1/functions/<name>/triggers/<id>``;
``GET /v1/trigger-changes?after=&wait=`` (the feed trigger daemons follow). A trigger belongs to
its function's account (the caller, as for the function routes) and goes away with its function or
version. Each ``Type`` is an entry of a registry: how its ``Config`` is checked and normalised, and
whether it may coexist with the triggers already stored (``http``: no two routes alike).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from easyfaas.brn import LATEST, Brn
from easyfaas.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound, ValidationError
from easyfaas.http import feed_query, read_json
from easyfaas.triggers import Trigger, TriggerChanges, TriggerList
from eventsources.mqtt_config import MQTT_TRIGGER_TYPE, validate_mqtt_config
from eventsources.schedule import CRON_TRIGGER_TYPE, validate_cron_config
from eventsources.source import ConfigError
from eventsources.status_client import EventSourceStatus
from httptrigger.config import HTTP_TRIGGER_TYPE, parse_http_config, route_table, routes_of
from httptrigger.routes import RouteError
from stubs.trigger_store import TriggerStore

if TYPE_CHECKING:
    from stubs.app import StubsHandlers

log = structlog.get_logger(__name__)

MAX_FEED_WAIT = 60.0
MAX_BODY = 64 * 1024
_FIELDS = frozenset({"Type", "Qualifier", "Config"})

TRIGGER_STORE = web.AppKey("trigger_store", TriggerStore)
# Set by the daemon when it knows the controller running the event sources (--controller-url).
TRIGGER_STATUS = web.AppKey("trigger_status", EventSourceStatus)


class TriggerConfigError(ValueError):
    """A Config is not valid for its type; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class TriggerType:
    # Config → its normalised form; raises TriggerConfigError (or RouteError) naming the field.
    validate: Callable[[Any], dict[str, Any]]
    # (the new trigger, all stored triggers but its old self) → raises ResourceConflict.
    check_conflicts: Callable[[Trigger, list[Trigger]], None] | None = None


def _validate_http(config: Any) -> dict[str, Any]:
    return parse_http_config(config).to_dict()


def _http_conflicts(trigger: Trigger, others: list[Trigger]) -> None:
    table = route_table(others)
    for route in routes_of(trigger):
        existing = table.conflict(route.method, route.segments)
        if existing is not None:
            owner = existing.target
            whose = f"trigger {owner.trigger_id}" if owner.account_id == trigger.Uid else "a trigger of another account"
            raise ResourceConflict(f"Config: route {route.route_key} is taken by {whose} ({existing.route_key})")


def _event_source_validator(validate: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """An event source's Config check (eventsources/), its ConfigError as this registry's."""
    def checked(config: Any) -> dict[str, Any]:
        try:
            return validate(config)
        except ConfigError as exc:
            raise TriggerConfigError(exc.field, str(exc).partition(": ")[2]) from None
    return checked


def default_trigger_types() -> dict[str, TriggerType]:
    return {HTTP_TRIGGER_TYPE: TriggerType(_validate_http, _http_conflicts),
            CRON_TRIGGER_TYPE: TriggerType(_event_source_validator(validate_cron_config)),
            MQTT_TRIGGER_TYPE: TriggerType(_event_source_validator(validate_mqtt_config))}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TriggerHandlers:
    def __init__(self, functions: StubsHandlers, store: TriggerStore, types: Mapping[str, TriggerType]) -> None:
        self.functions = functions
        self.store = store
        self.types = types

    async def _function(self, request: web.Request, qualifier: str | None) -> tuple[str, Brn]:
        """(caller uid, the function's BRN at ``qualifier``), the version checked to exist."""
        uid, brn = self.functions.resolve(request, None)
        if brn.qualifier not in (None, LATEST) and qualifier not in (None, brn.qualifier):
            raise InvalidParameterValue(f"Qualifier: {qualifier!r} conflicts with the reference's {brn.qualifier!r}")
        q = qualifier or brn.qualifier or LATEST
        if not isinstance(q, str) or not (q == LATEST or (q.isascii() and q.isdigit() and q[0] != "0")):
            raise InvalidParameterValue(f"Qualifier: {q!r} is not $LATEST or a version number")
        versioned = brn.with_qualifier(q)
        await self.functions.load(versioned)  # ResourceNotFound when the function or version is not there
        return uid, versioned

    def _check_body(self, body: Any, *, creating: bool) -> tuple[str, str | None, dict[str, Any]]:
        if not isinstance(body, dict):
            raise ValidationError("expected a JSON object with Type, Qualifier and Config")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ValidationError(f"{unknown[0]}: unknown field; known: Config, Qualifier, Type")
        kind = body.get("Type")
        if creating and kind is None:
            raise ValidationError(f"Type: required, one of {', '.join(sorted(self.types))}")
        if kind is not None and (not isinstance(kind, str) or kind not in self.types):
            raise ValidationError(f"Type: {kind!r} is not one of {', '.join(sorted(self.types))}")
        qualifier = body.get("Qualifier")
        if qualifier is not None and not isinstance(qualifier, str):
            raise ValidationError("Qualifier: expected a string")
        config = body.get("Config")
        if config is None:
            raise ValidationError("Config: required")
        return kind or "", qualifier, config

    def _validated(self, kind: str, config: Any) -> dict[str, Any]:
        try:
            return self.types[kind].validate(config)
        except (TriggerConfigError, RouteError) as exc:
            raise ValidationError(str(exc)) from None

    async def _save(self, uid: str, brn: Brn, trigger: Trigger) -> Trigger:
        check = self.types[trigger.Type].check_conflicts
        async with self.functions.store.lock(brn.account, brn.name):
            await self.functions.load(brn)  # still there under the function's lock
            async with self.store.lock():
                if check is not None:
                    check(trigger, [t for t in self.store.all() if t.TriggerId != trigger.TriggerId])
                return await self.store.put(brn.account, brn.name, trigger)

    async def create(self, request: web.Request) -> web.Response:
        kind, qualifier, config = self._check_body(await read_json(request, max_size=MAX_BODY), creating=True)
        normalised = self._validated(kind, config)
        uid, brn = await self._function(request, qualifier)
        now = _now()
        trigger = Trigger(TriggerId=uuid.uuid4().hex, Type=kind, Qualifier=brn.qualifier or LATEST,
                          Config=normalised, CreatedAt=now, UpdatedAt=now, FunctionBrn=str(brn),
                          FunctionName=brn.name, Uid=uid)
        trigger = await self._save(uid, brn, trigger)
        log.info("trigger_created", trigger=trigger.TriggerId, type=kind, function=str(brn), uid=uid)
        return web.json_response(trigger.to_dict(), status=201)

    def _existing(self, request: web.Request) -> tuple[str, Brn, Trigger]:
        uid, brn = self.functions.resolve(request, None)
        trigger_id = request.match_info["id"]
        trigger = self.store.get(brn.account, brn.name, trigger_id) if self.store.valid_id(trigger_id) else None
        if trigger is None:
            raise ResourceNotFound(f"trigger {trigger_id} of function {brn.unqualified()} not found")
        return uid, brn, trigger

    async def list(self, request: web.Request) -> web.Response:
        _, brn = self.functions.resolve(request, None)
        await self.functions.load(brn.with_qualifier(LATEST))
        return web.json_response(TriggerList(Triggers=self.store.of_function(brn.account, brn.name)).to_dict())

    async def get(self, request: web.Request) -> web.Response:
        trigger = self._existing(request)[2]
        body = trigger.to_dict()
        live = request.app.get(TRIGGER_STATUS)
        if live is not None:
            # The event source's live status (State, LastFiredAt/NextFireAt, Connected, ...).
            extra = await live.status(trigger)
            body.update({k: v for k, v in (extra or {}).items() if k not in body})
        return web.json_response(body)

    async def update(self, request: web.Request) -> web.Response:
        kind, qualifier, config = self._check_body(await read_json(request, max_size=MAX_BODY), creating=False)
        uid, _, old = self._existing(request)
        if kind and kind != old.Type:
            raise ValidationError(f"Type: a trigger's type cannot change ({old.Type}); create another trigger")
        normalised = self._validated(old.Type, config)
        uid, brn = await self._function(request, qualifier or old.Qualifier)
        trigger = Trigger(TriggerId=old.TriggerId, Type=old.Type, Qualifier=brn.qualifier or LATEST,
                          Config=normalised, CreatedAt=old.CreatedAt, UpdatedAt=_now(), FunctionBrn=str(brn),
                          FunctionName=brn.name, Uid=uid)
        trigger = await self._save(uid, brn, trigger)
        log.info("trigger_updated", trigger=trigger.TriggerId, function=str(brn), uid=uid)
        return web.json_response(trigger.to_dict())

    async def delete(self, request: web.Request) -> web.Response:
        _, brn, trigger = self._existing(request)
        async with self.functions.store.lock(brn.account, brn.name), self.store.lock():
            deleted = await self.store.delete(brn.account, brn.name, trigger.TriggerId)
        if not deleted:
            raise ResourceNotFound(f"trigger {trigger.TriggerId} not found")
        log.info("trigger_deleted", trigger=trigger.TriggerId, function=str(brn.unqualified()))
        return web.Response(status=204)

    async def changes(self, request: web.Request) -> web.Response:
        """Changes after ``after``, waiting up to ``wait`` s; every trigger when the reader must resync."""
        after, wait = feed_query(request, MAX_FEED_WAIT)
        batch = await self.store.feed.wait(after, wait)
        snapshot = self.store.all() if after < 0 or batch.lost else None
        return web.json_response(TriggerChanges(BootID=batch.boot_id, Seq=batch.seq, Lost=batch.lost,
                                                Changes=batch.items, Triggers=snapshot).to_dict())


def add_trigger_routes(app: web.Application, functions: StubsHandlers,
                       types: Mapping[str, TriggerType] | None = None) -> TriggerStore:
    """Serve the trigger API on ``app``, its store beside ``functions``' store."""
    store = TriggerStore(functions.store)
    app[TRIGGER_STORE] = store
    h = TriggerHandlers(functions, store, types if types is not None else default_trigger_types())
    functions.deletion_listeners.append(store.forget)

    async def started(_app: web.Application) -> AsyncIterator[None]:
        await store.start()  # after the function store's own start (its cleanup context is first)
        yield

    async def close_feed(_app: web.Application) -> None:
        store.feed.close()  # ends the gateways' long polls now, not at the shutdown timeout

    app.cleanup_ctx.append(started)
    app.on_shutdown.append(close_feed)
    app.router.add_post("/v1/functions/{ref}/triggers", h.create)
    app.router.add_get("/v1/functions/{ref}/triggers", h.list)
    app.router.add_get("/v1/functions/{ref}/triggers/{id}", h.get)
    app.router.add_put("/v1/functions/{ref}/triggers/{id}", h.update)
    app.router.add_delete("/v1/functions/{ref}/triggers/{id}", h.delete)
    app.router.add_get("/v1/trigger-changes", h.changes)
    return store


def add_trigger_status(app: web.Application, controller_url: str,
                       credentials: Callable[[], dict[str, str]] | None = None, ssl: Any = None) -> None:
    """Merge the event sources' live status (from the controller at ``controller_url``, asked with
    the pod's key ``credentials``) into GETs."""
    status = EventSourceStatus(controller_url, credentials=credentials, ssl=ssl)
    app[TRIGGER_STATUS] = status

    async def lifetime(_app: web.Application) -> AsyncIterator[None]:
        yield
        await status.close()

    app.cleanup_ctx.append(lifetime)
