"""Asynchronous invocations on the controller: the durable enqueue behind
``X-easyfaas-Invoke-Type: event``, the records and dead-letter routes, and the lifetime of the
queue and its workers.

Routes (the caller must own the function; 403 otherwise, 404 for unknown ids):

* ``GET /v1/invocations/<id>`` → the record;
* ``GET /v1/invocations?FunctionName=&Status=&Limit=`` → ``{"Invocations": [...]}``, newest first;
* ``GET /v1/dead-letters?FunctionName=&Limit=`` → ``{"DeadLetters": [...]}`` (records + ``Payload``);
* ``POST /v1/dead-letters/<id>/redrive`` → 202, the record queued again with attempts reset;
* ``DELETE /v1/dead-letters/<id>`` → 204;
* ``GET /v1/event-queue`` → queue depth and oldest age per function and in total.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import AsyncIterator

import structlog
from aiohttp import web

from controller.event_queue import EventQueue, QueuedEvent, open_event_queue
from controller.event_queue.callbacks import CallbackSender, check_callback_url
from controller.event_queue.settings_source import EventInvokeConfigSource
from controller.event_queue.workers import EventWorkers
from controller.invoke import Invoker, parse_function_ref
from controller.registry import Registry, ResolvedFunction
from easyfaas.auth import AUTHENTICATOR
from easyfaas.brn import Brn
from easyfaas.config import Settings
from easyfaas.errors import InvalidInvokeCaller, InvalidParameterValue, RequestTooLarge, ResourceNotFound
from easyfaas.event_invoke import CALLBACK_URL, MAX_EVENT_SIZE, InvocationRecord, InvocationStatus
from easyfaas.http import ACCOUNT_ID, REQUEST_ID
from easyfaas.outbound import OutboundGuard
from easyfaas.trace import TRACEPARENT, parse_traceparent

log = structlog.get_logger(__name__)

EVENT_QUEUE = web.AppKey("event_queue", EventQueue)
EVENT_WORKERS = web.AppKey("event_workers", EventWorkers)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
PRUNE_INTERVAL = 60.0
# Synchronous calls in flight from which the pod counts as busy: the embedded queue then paces its
# commits (controller/event_queue/sqlite_backend.py), and a caller or two never make it wait.
BUSY_SYNCHRONOUS_CALLS = 4


def location_of(request_id: str) -> str:
    return f"/v1/invocations/{request_id}"


class EventIntake:
    """The enqueue of an asynchronous invocation: the 202 goes out only once the event is durable."""

    def __init__(self, queue: EventQueue, *, max_event_size: int = MAX_EVENT_SIZE,
                 guard: OutboundGuard | None = None) -> None:
        self.queue = queue
        self.guard = guard  # refuses callback URLs aimed at the pod or the host (easyfaas/outbound.py)
        self.max_event_size = max_event_size

    async def enqueue(self, fn: ResolvedFunction, brn: Brn, caller: str, event: str, request_id: str,
                      headers: Mapping[str, str]) -> tuple[int, dict[str, str]]:
        """(status, headers) of the accepted event; raises the FaasError that refused it."""
        size = len(event.encode())
        if size > self.max_event_size:
            raise RequestTooLarge(f"an asynchronous invocation's event of {size} bytes is larger than the limit "
                                  f"of {self.max_event_size} bytes")
        callback = headers.get(CALLBACK_URL) or ""
        if callback:
            check_callback_url(callback)
            if self.guard is not None and self.guard.enabled:
                await self.guard.check_url(callback, CALLBACK_URL)
        # The caller's trace context goes with the event: each attempt runs as a child span of it.
        traceparent = (headers.get(TRACEPARENT) or "").strip()
        if traceparent and parse_traceparent(traceparent) is None:
            traceparent = ""  # a malformed one starts a new trace, as on a synchronous call
        queued = QueuedEvent(request_id=request_id, function=str(brn.unqualified()), function_arn=str(brn),
                             account=caller or fn.record.Configuration.Uid, payload=event, callback_url=callback,
                             traceparent=traceparent)
        started = time.perf_counter()
        await self.queue.enqueue(queued)
        log.info("invoke_async_accepted", request_id=request_id, function=str(brn),
                 duration_ms=round((time.perf_counter() - started) * 1000, 3))
        return 202, {REQUEST_ID: request_id, "Location": location_of(request_id),
                     "Content-Type": "text/plain; charset=utf-8"}


EVENT_INTAKE = web.AppKey("event_intake", EventIntake)


# ---- routes ----------------------------------------------------------------------------------------


def _caller(request: web.Request) -> str:
    caller = request.headers.get(ACCOUNT_ID, "")
    if not caller:
        raise InvalidInvokeCaller(f"missing {ACCOUNT_ID} header")
    return caller


def _owned(record: InvocationRecord | None, caller: str, request_id: str) -> InvocationRecord:
    if record is None:
        raise ResourceNotFound(f"no asynchronous invocation {request_id}")
    if record.Account != caller:
        raise InvalidInvokeCaller(f"the invocation {request_id} belongs to another account")
    return record


def _function_filter(request: web.Request, caller: str) -> str | None:
    name = request.query.get("FunctionName")
    if not name:
        return None
    return str(parse_function_ref(name, None, caller).unqualified())


def _limit(request: web.Request) -> int:
    text = request.query.get("Limit")
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise InvalidParameterValue(f"Limit: {text!r} is not an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameterValue(f"Limit: {limit} is out of range 1-{MAX_LIMIT}")
    return limit


async def get_invocation(request: web.Request) -> web.Response:
    caller = _caller(request)
    request_id = request.match_info["id"]
    record = _owned(await request.app[EVENT_QUEUE].record(request_id), caller, request_id)
    return web.json_response(record.to_wire())


async def list_invocations(request: web.Request) -> web.Response:
    caller = _caller(request)
    status_text = request.query.get("Status")
    status = None
    if status_text:
        try:
            status = InvocationStatus(status_text)
        except ValueError:
            raise InvalidParameterValue(f"Status: {status_text!r} is not one of "
                                        f"{', '.join(s.value for s in InvocationStatus)}") from None
    records = await request.app[EVENT_QUEUE].records(account=caller, function=_function_filter(request, caller),
                                                     status=status, limit=_limit(request))
    return web.json_response({"Invocations": [r.to_wire() for r in records]})


async def list_dead_letters(request: web.Request) -> web.Response:
    caller = _caller(request)
    letters = await request.app[EVENT_QUEUE].dead_letters(account=caller, function=_function_filter(request, caller),
                                                          limit=_limit(request))
    return web.json_response({"DeadLetters": [d.to_wire() for d in letters]})


async def redrive(request: web.Request) -> web.Response:
    caller = _caller(request)
    request_id = request.match_info["id"]
    queue = request.app[EVENT_QUEUE]
    letter = await queue.dead_letter(request_id)
    _owned(letter.record if letter else None, caller, request_id)
    record = await queue.redrive(request_id)
    if record is None:
        raise ResourceNotFound(f"no dead letter {request_id}")
    log.info("dead_letter_redriven", request_id=request_id)
    return web.json_response(record.to_wire(), status=202, headers={"Location": location_of(request_id)})


async def delete_dead_letter(request: web.Request) -> web.Response:
    caller = _caller(request)
    request_id = request.match_info["id"]
    queue = request.app[EVENT_QUEUE]
    letter = await queue.dead_letter(request_id)
    _owned(letter.record if letter else None, caller, request_id)
    if not await queue.delete_dead_letter(request_id):
        raise ResourceNotFound(f"no dead letter {request_id}")
    return web.Response(status=204)


async def queue_depth(request: web.Request) -> web.Response:
    depth = await request.app[EVENT_QUEUE].depth()
    body = depth.to_wire()
    body["InFlight"] = request.app[EVENT_WORKERS].in_flight
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/invocations", list_invocations)
    app.router.add_get("/v1/invocations/{id}", get_invocation)
    app.router.add_get("/v1/dead-letters", list_dead_letters)
    app.router.add_post("/v1/dead-letters/{id}/redrive", redrive)
    app.router.add_delete("/v1/dead-letters/{id}", delete_dead_letter)
    app.router.add_get("/v1/event-queue", queue_depth)


# ---- lifetime ------------------------------------------------------------------------------------


def setup_async_invocations(app: web.Application, opts: Settings, invoker: Invoker, registry: Registry) -> None:
    """Build the queue, the intake and the workers; their lifetime is one cleanup context.

    Append it after the pool's context: the workers stop (and drain) before the pool closes.
    """
    state_dir = str(Path(getattr(opts, "state_dir", "/var/faas/controller")))
    queue = open_event_queue(getattr(opts, "event_queue", ""), state_dir,
                             max_queued_per_function=getattr(opts, "event_queue_length", 10000),
                             max_queued=getattr(opts, "event_queue_total", 100000),
                             record_ttl=getattr(opts, "event_record_ttl", 86400.0),
                             max_records=getattr(opts, "event_max_records", 100000),
                             ack_wait=getattr(opts, "event_ack_wait", 30.0),
                             busy=lambda: invoker.synchronous_in_flight >= BUSY_SYNCHRONOUS_CALLS)
    # With keys required, callback URLs are checked by the outbound guard when given and when used.
    guard = OutboundGuard.of(AUTHENTICATOR in app, getattr(opts, "outbound_allow", ""))
    intake = EventIntake(queue, guard=guard)
    callbacks = CallbackSender(queue.note_callback, base_delay=min(1.0, getattr(opts, "event_retry_base", 60.0)),
                               guard=guard)
    settings = EventInvokeConfigSource(registry)  # the registry client's lifetime is the controller's
    workers = EventWorkers(queue, invoker, settings, callbacks,
                           workers=getattr(opts, "event_workers", 64),
                           share=getattr(opts, "event_concurrency_share", 0.5),
                           retry_base=getattr(opts, "event_retry_base", 60.0),
                           heartbeat=max(0.5, getattr(opts, "event_ack_wait", 30.0) / 3))
    app[EVENT_QUEUE] = queue
    app[EVENT_INTAKE] = intake
    app[EVENT_WORKERS] = workers
    invoker.events = intake
    drain_timeout = getattr(opts, "drain_timeout", 30.0)

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        await queue.start()
        await callbacks.start()
        await workers.start()
        pruner = asyncio.get_running_loop().create_task(_prune_periodically(queue))
        try:
            yield
        finally:
            pruner.cancel()
            await asyncio.gather(pruner, return_exceptions=True)
            await workers.close(drain_timeout)
            await callbacks.close()
            await queue.close()

    async def stop_leasing(_: web.Application) -> None:
        await workers.stop_leasing()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(stop_leasing)
    add_routes(app)


async def _prune_periodically(queue: EventQueue) -> None:
    while True:
        try:
            gone = await queue.prune()
            if gone:
                log.info("event_records_pruned", count=gone)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("event_records_prune_failed", error=str(exc))
        await asyncio.sleep(PRUNE_INTERVAL)
