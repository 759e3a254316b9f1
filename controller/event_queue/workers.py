"""The workers: lease due events and run them through the same path as synchronous calls
(:meth:`controller.invoke.Invoker.run`), then settle each one in the queue.

* Sync first: a function's asynchronous invocations in flight are bounded to
  ``--event-concurrency-share`` of its concurrency (its reserved concurrency, else the pool's
  sandboxes × its ``PodConcurrentQuota``), and all of them to ``--event-workers``.
* The dispatcher leases up to ``prefetch`` events beyond the free workers, so that a worker whose
  event is over starts the next one at once instead of waiting for a lease's round trip to the
  queue. A prefetched event is leased (its attempt counts, it is in flight for the share bound);
  one still waiting for a worker when the controller stops is put back without counting.
* A throttle (429) or a platform error (5xx) puts the event back without counting the attempt,
  with a back-off from 1 s (or the retry base when smaller) doubling up to 5 minutes.
* A function error, a timeout, an OOM or an init error is a failed attempt: retried after
  ``--event-retry-base`` × 2^(n-1) s while ``MaximumRetryAttempts`` allows, else ``failed``.
* An event older than ``MaximumEventAgeInSeconds`` when it comes up is ``expired``.
* ``failed``/``expired`` land in the dead letters; the function's ``OnSuccess``/``OnFailure``
  destination receives Lambda's invocation record as a new asynchronous invocation, and the
  caller's callback URL the result.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from typing import Any

import structlog

from controller.event_queue.callbacks import CallbackSender
from controller.event_queue.interface import Delivery, EventQueue, Outcome, QueuedEvent
from controller.event_queue.settings_source import EventInvokeConfigSource
from controller.invoke import InvokeResult, Invoker, log_tail
from controller.pool import FunctionInitError
from controller.registry import ResolvedFunction
from easyfaas.brn import LATEST, Brn, BrnError, account_hash
from easyfaas.errors import FaasError
from easyfaas.event_invoke import Condition, EventInvokeConfig, InvocationStatus, destination_record
from easyfaas.trace import continue_trace

log = structlog.get_logger(__name__)

MAX_THROTTLE_DELAY = 300.0
LEASE_WAIT = 1.0
SETTLE_ATTEMPTS = 30


class EventWorkers:
    def __init__(self, queue: EventQueue, invoker: Invoker, settings: EventInvokeConfigSource,
                 callbacks: CallbackSender, *, workers: int = 64, share: float = 0.5, retry_base: float = 60.0,
                 heartbeat: float = 10.0, prefetch: int | None = None) -> None:
        self.queue = queue
        self.invoker = invoker
        self.settings = settings
        self.callbacks = callbacks
        self.workers = workers
        self.prefetch = workers if prefetch is None else max(0, prefetch)
        self.share = share
        self.retry_base = retry_base
        self.throttle_base = min(1.0, retry_base)
        self.heartbeat = heartbeat
        # Events leased and not yet run to the end, per function (the share bound) and in total
        # (at most workers + prefetch); an event whose run is over no longer counts while its
        # outcome is being committed.
        self._in_flight: dict[str, int] = {}
        self._running = 0
        self._busy = 0  # workers running an event (at most --event-workers)
        self._slot_waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._limits: dict[str, int] = {}  # learned from each function's metadata as it runs
        self._throttles: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room_freed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self.finished = 0

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop_leasing(self) -> None:
        """Take no more events (the controller is shutting down); running ones carry on."""
        self._closing = True
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop leasing; let running events finish (up to ``timeout``), then cancel them.

        A cancelled event stays leased: the SQLite queue runs it again after the restart, JetStream
        redelivers it after its ack wait.
        """
        await self.stop_leasing()
        self._wake_slot_waiters()
        if self._tasks:
            log.info("draining_async_invocations", count=len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ---- dispatch ------------------------------------------------------------------------------

    def room(self, function: str) -> int:
        limit = self._limits.get(function, 1)
        return max(0, limit - self._in_flight.get(function, 0))

    def _learn_limit(self, function: str, fn: ResolvedFunction) -> None:
        cfg = fn.record.Configuration
        reserved = fn.record.Concurrency.ReservedConcurrentExecutions
        if reserved is not None and reserved > 0:
            concurrency = reserved
        else:
            sandboxes = len(self.invoker.pool.sandboxes) or 1
            concurrency = sandboxes * max(1, cfg.PodConcurrentQuota)
        self._limits[function] = max(1, int(concurrency * self.share))

    async def _dispatch(self) -> None:
        window = self.workers + self.prefetch
        # With every worker busy, top the prefetched events up in batches rather than one by one.
        batch = max(1, self.prefetch // 4)
        while not self._closing:
            free = window - self._running
            if free <= 0 or (free < batch and self._running >= self.workers):
                self._room_freed.clear()
                await self._room_freed.wait()
                continue
            try:
                deliveries = await self.queue.lease(free, self.room, LEASE_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the queue is away (server restart): try again
                log.warning("event_lease_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for delivery in deliveries:
                fn = delivery.event.function
                self._in_flight[fn] = self._in_flight.get(fn, 0) + 1
                self._running += 1
                task = asyncio.get_running_loop().create_task(self._run_counted(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    async def _run_counted(self, d: Delivery) -> None:
        ran = asyncio.Event()
        worker = False
        try:
            worker = await self._wait_for_worker(d)
            if worker:
                await self._run(d, ran)
            else:
                # Prefetched, and the controller stops before a worker was free: not an attempt.
                await self._settle(d, lambda: self.queue.requeue(d, 0.0))
        finally:
            if not ran.is_set():
                self._ran(d.event.function, worker)

    def _ran(self, function: str, worker: bool = True) -> None:
        if worker:
            self._free_worker()
        self._running -= 1
        left = self._in_flight.get(function, 1) - 1
        if left > 0:
            self._in_flight[function] = left
        else:
            self._in_flight.pop(function, None)
        self._room_freed.set()

    async def _wait_for_worker(self, d: Delivery) -> bool:
        if not self.queue.lease_expires or self._busy < self.workers and not self._slot_waiters:
            return await self._take_worker()
        heartbeat = asyncio.get_running_loop().create_task(self._keep_lease(d))
        try:
            return await self._take_worker()
        finally:
            heartbeat.cancel()

    async def _take_worker(self) -> bool:
        """Wait for a free worker (first come, first served); False once the controller is stopping."""
        if self._closing:
            return False
        if self._busy < self.workers and not self._slot_waiters:
            self._busy += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._free_worker()  # the worker it was handed goes to the next in line
            raise

    def _free_worker(self) -> None:
        """A worker is free: hand it to the first event waiting for one, else it stays free."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._busy -= 1

    def _wake_slot_waiters(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event_worker_failed", error=repr(task.exception()))

    # ---- one event -----------------------------------------------------------------------------

    async def _run(self, d: Delivery, ran: asyncio.Event) -> None:
        ev = d.event
        config = await self.settings.get(ev.function, ev.account, ev.request_id)
        age = time.time() - ev.enqueued_at
        if age > config.MaximumEventAgeInSeconds:
            error = {"errorMessage": f"the event was {age:.0f} s old: MaximumEventAgeInSeconds is "
                                     f"{config.MaximumEventAgeInSeconds}", "errorType": "EventAgeExceeded"}
            await self._finish(d, config, Outcome(InvocationStatus.EXPIRED, error=error), None, None)
            return
        heartbeat = asyncio.get_running_loop().create_task(self._keep_lease(d)) if self.queue.lease_expires else None
        started = time.perf_counter()
        fn: ResolvedFunction | None = None
        try:
            fn = await self._resolve(ev)
            self._learn_limit(ev.function, fn)
            # Each attempt is a new span, a child of the caller's.
            result, source, slot = await self.invoker.run(fn, ev.account, ev.payload, ev.request_id, True,
                                                          trace=continue_trace(ev.traceparent or None))
        except FunctionInitError as exc:
            result = InvokeResult(False, json.dumps(exc.error, ensure_ascii=False), "application/json", "", 0.0)
            source, slot = "cold", ""
        except FaasError as err:
            if err.status == 429 or err.status >= 500:
                n = self._throttles.get(ev.request_id, 0)
                self._throttles[ev.request_id] = n + 1
                delay = min(MAX_THROTTLE_DELAY, self.throttle_base * 2 ** n)
                log.info("invoke_async_requeued", request_id=ev.request_id, function=ev.function_arn,
                         status=err.status, code=err.code, delay_s=delay)
                await self._settle(d, lambda: self.queue.requeue(d, delay))
                return
            error = {"errorMessage": err.cause or err.message, "errorType": err.code}
            await self._finish(d, config, Outcome(InvocationStatus.FAILED, error=error), None, None)
            return
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            ran.set()
            self._ran(ev.function)
        self._throttles.pop(ev.request_id, None)
        tail = None
        if fn is not None:
            cfg = fn.record.Configuration
            tail = log_tail(ev.request_id, cfg.Version, result.logs, result.duration_ms, cfg.MemorySize,
                            result.memory_peak_mb)
        log.info("invoke_async", request_id=ev.request_id, function=ev.function_arn, slot=slot, source=source,
                 attempt=d.attempts, status=200 if result.ok else 500,
                 duration_ms=round((time.perf_counter() - started) * 1000, 3))
        if result.ok:
            await self._finish(d, config, Outcome(InvocationStatus.SUCCEEDED, result=result.payload, log_result=tail),
                               result, fn)
            return
        error = _error_of(result.payload)
        if d.attempts <= config.MaximumRetryAttempts:
            delay = self.retry_base * 2 ** (d.attempts - 1)
            await self._settle(d, lambda: self.queue.retry(
                d, delay, Outcome(InvocationStatus.FAILED, error=error, log_result=tail)))
            return
        await self._finish(d, config, Outcome(InvocationStatus.FAILED, error=error, log_result=tail), result, fn)

    async def _resolve(self, ev: QueuedEvent) -> ResolvedFunction:
        registry = self.invoker.registry
        fn = registry.cached_function(ev.function_arn)
        if fn is None:
            fn = await registry.get_function(Brn.parse(ev.function_arn), account_id=ev.account,
                                             request_id=ev.request_id)
        return fn

    async def _keep_lease(self, d: Delivery) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.queue.touch(d)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("event_lease_touch_failed", request_id=d.event.request_id, error=str(exc))

    async def _settle(self, d: Delivery, write: Any) -> bool:
        """Write the outcome, retrying while the queue is away; False if it never got through."""
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                await write()
                return True
            except LookupError:
                log.warning("event_lease_lost", request_id=d.event.request_id)
                return False
            except Exception as exc:  # noqa: BLE001 - a restarting NATS server, a full disk
                log.warning("event_settle_failed", request_id=d.event.request_id, attempt=attempt + 1,
                            error=str(exc) or type(exc).__name__)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
        log.error("event_settle_gave_up", request_id=d.event.request_id)
        return False

    async def _finish(self, d: Delivery, config: EventInvokeConfig, outcome: Outcome, result: InvokeResult | None,
                      fn: ResolvedFunction | None) -> None:
        ev = d.event
        self._throttles.pop(ev.request_id, None)
        if not await self._settle(d, lambda: self.queue.finish(d, outcome)):
            return
        self.finished += 1
        succeeded = outcome.status is InvocationStatus.SUCCEEDED
        if not succeeded:
            log.warning("invoke_async_dead_lettered", request_id=ev.request_id, function=ev.function_arn,
                        status=outcome.status.value, attempts=d.attempts,
                        error_type=(outcome.error or {}).get("errorType"))
            if self.invoker.metrics is not None:
                self.invoker.metrics.dead_lettered(ev.function)
        destination = config.OnSuccess if succeeded else config.OnFailure
        if destination:
            await self._send_to_destination(destination, d, outcome, result, fn)
        if ev.callback_url:
            if succeeded and result is not None:
                body, content_type = result.payload.encode(), result.content_type
            else:
                body = json.dumps(outcome.error or {}, ensure_ascii=False).encode()
                content_type = "application/json"
            self.callbacks.send(ev.callback_url, ev.request_id, outcome.status.value, body, content_type,
                                function_error=not succeeded)

    async def _send_to_destination(self, destination: str, d: Delivery, outcome: Outcome,
                                   result: InvokeResult | None, fn: ResolvedFunction | None) -> None:
        ev = d.event
        try:
            dest = Brn.parse(destination)
        except BrnError:
            log.warning("destination_invalid", request_id=ev.request_id, destination=destination)
            return
        if dest.account != account_hash(ev.account):
            log.warning("destination_refused", request_id=ev.request_id, destination=destination,
                        detail="a destination must belong to the function's owner")
            return
        condition = (Condition.SUCCESS if outcome.status is InvocationStatus.SUCCEEDED else
                     Condition.EVENT_AGE_EXCEEDED if outcome.status is InvocationStatus.EXPIRED else
                     Condition.RETRIES_EXHAUSTED)
        version = fn.record.Configuration.Version if fn is not None else LATEST
        record = destination_record(
            request_id=ev.request_id, function_arn=ev.function_arn, condition=condition, invoke_count=d.attempts,
            request_payload=_json_or_text(ev.payload),
            status_code=200 if result is not None else None, executed_version=version or LATEST,
            function_error=None if outcome.status is InvocationStatus.SUCCEEDED else "Unhandled",
            response_payload=_json_or_text(result.payload) if result is not None else None)
        qualified = dest if dest.qualifier else dest.with_qualifier(LATEST)
        event = QueuedEvent(request_id=str(uuid.uuid4()), function=str(dest.unqualified()),
                            function_arn=str(qualified), account=ev.account,
                            payload=json.dumps(record, ensure_ascii=False), traceparent=ev.traceparent)
        try:
            await self.queue.enqueue(event)
        except Exception as exc:  # noqa: BLE001 - the event itself is settled; the destination is best effort
            log.warning("destination_enqueue_failed", request_id=ev.request_id, destination=destination,
                        error=str(exc))
            return
        log.info("destination_enqueued", request_id=ev.request_id, destination=str(qualified),
                 destination_request_id=event.request_id, condition=condition.value)


def _error_of(payload: str) -> dict[str, Any]:
    try:
        error = json.loads(payload)
    except ValueError:
        return {"errorMessage": payload[:1000], "errorType": "Runtime.Error"}
    return error if isinstance(error, dict) else {"errorMessage": str(error), "errorType": "Runtime.Error"}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
