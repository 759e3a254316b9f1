"""The ``cron`` event source: each trigger's due times become asynchronous invocations.

Exactly once per due time: the event's request id is derived from (trigger id, due time), so the
durable intake refuses a second enqueue of it (409) — from this controller after a restart or from
another controller sharing a NATS queue. A record of the id is looked for first, as JetStream
only refuses a repeated id within its duplicate window (2 minutes) and a catch-up may come later.
The last fired due time is kept in a
:class:`~eventsources.fire_log.FireLog` so that a restart resumes after it. It is written after
the enqueue: a crash in between leaves a due time that is enqueued again and refused as a duplicate.

Due times missed while the controller was down (or stalled for more than ``MISSED_AFTER``) fire
as ``CatchUp`` says: ``last`` fires the most recent of them once, ``none`` none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import structlog

from easyfaas.brn import Brn, BrnError
from eventsources.fire_log import FireLog
from eventsources.schedule import CRON_TRIGGER_TYPE, CronConfig, parse_cron_config
from eventsources.source import ConfigError, Intake, Refused, SourceTrigger, Submitted, TriggerChange

log = structlog.get_logger(__name__)

MISSED_AFTER = 5.0  # a due time this far in the past is a missed one, not a late one
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_SUBMIT_TIME = 60.0
_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4f7b-9a35-1e2d4c5b6a70")


def iso_z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fire_request_id(trigger_id: str, due: datetime) -> str:
    """The request id of a due time's event: the same in every controller, at every try."""
    return str(uuid.uuid5(_NAMESPACE, f"{trigger_id}@{iso_z(due)}"))


def trigger_resource(trigger: SourceTrigger) -> str:
    """The trigger's ARN-like id (``resources`` of the Scheduled Event)."""
    try:
        brn = Brn.parse(trigger.function_brn)
    except BrnError:
        return f"trigger/{trigger.trigger_id}"
    return f"brn:{brn.partition}:{brn.service}:{brn.region}:{brn.account}:trigger/{trigger.trigger_id}"


def scheduled_event(trigger: SourceTrigger, due: datetime, request_id: str) -> dict[str, Any]:
    """EventBridge's Scheduled Event for one due time."""
    try:
        region = Brn.parse(trigger.function_brn).region
    except BrnError:
        region = ""
    return {"version": "0", "id": request_id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": trigger.uid, "time": iso_z(due), "region": region, "resources": [trigger_resource(trigger)],
            "detail": {}}


def _parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ScheduleRun:
    """One trigger's timer: sleeps until each due time, fires it, notes it."""

    def __init__(self, trigger: SourceTrigger, intake: Intake, fire_log: FireLog) -> None:
        self.trigger = trigger
        self.intake = intake
        self.fire_log = fire_log
        self.state = "starting"
        self.last_fired: datetime | None = None
        self.next_fire: datetime | None = None
        self.last_error = ""
        self.fired = 0
        self.duplicates = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.state != "error":
            self.state = "stopped"

    def status(self) -> dict[str, Any]:
        return {"State": self.state, "LastFiredAt": iso_z(self.last_fired) if self.last_fired else None,
                "NextFireAt": iso_z(self.next_fire) if self.next_fire else None, "LastError": self.last_error or None,
                "Fired": self.fired}

    async def _run(self) -> None:
        try:
            config = parse_cron_config(self.trigger.config)
        except ConfigError as exc:
            self.state, self.last_error = "error", str(exc)
            log.warning("schedule_invalid", trigger=self.trigger.trigger_id, error=str(exc))
            return
        self.last_fired = await asyncio.to_thread(self.fire_log.last_fired, self.trigger.trigger_id)
        if not config.enabled:
            self.state = "disabled"
            return
        anchor = _parse_time(self.trigger.updated_at) or _parse_time(self.trigger.created_at)
        now = _now()
        if self.last_fired is None:
            # Nothing before the trigger existed (in this form) is due; CatchUp=last may fire the
            # latest due time since then that nobody fired.
            after = min(anchor, now) if (anchor is not None and config.catch_up == "last") else now
        else:
            after = self.last_fired
        self.state = "scheduled"
        after = await self._catch_up(config, after, anchor)
        while True:
            due = config.schedule.next_after(after, anchor)
            self.next_fire = due
            now = _now()
            if (now - due).total_seconds() > MISSED_AFTER:
                after = await self._catch_up(config, after, anchor)
                continue
            delay = (due - now).total_seconds()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._fire(config, due)
            after = due

    async def _catch_up(self, config: CronConfig, after: datetime, anchor: datetime | None) -> datetime:
        """Fire what was missed in (``after``, now] as CatchUp says; the time to go on from."""
        now = _now()
        missed = config.schedule.latest_at_or_before(now, after, anchor)
        if missed is None:
            return after
        if config.catch_up == "last":
            log.info("schedule_catch_up", trigger=self.trigger.trigger_id, due=iso_z(missed))
            await self._fire(config, missed)
        else:
            log.info("schedule_missed_skipped", trigger=self.trigger.trigger_id, up_to=iso_z(missed))
        return max(missed, after)

    async def _fire(self, config: CronConfig, due: datetime) -> None:
        request_id = fire_request_id(self.trigger.trigger_id, due)
        body = config.input if config.input is not None else scheduled_event(self.trigger, due, request_id)
        event = json.dumps(body, ensure_ascii=False)
        started = time.monotonic()
        for attempt in range(1000):
            try:
                known = await self.intake.known(request_id)
            except Exception as exc:  # noqa: BLE001 - the submit below still refuses a repeat
                log.info("schedule_record_lookup_failed", request_id=request_id, error=str(exc))
                known = False
            try:
                if known:
                    result = Submitted.DUPLICATE
                else:
                    result = await self.intake.submit(self.trigger, event, request_id)
            except Refused as exc:
                self.last_error = str(exc)
                if not exc.retryable or time.monotonic() - started > MAX_SUBMIT_TIME:
                    log.warning("schedule_fire_refused", trigger=self.trigger.trigger_id, request_id=request_id,
                                due=iso_z(due), error=str(exc))
                    break
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                continue
            if result is Submitted.DUPLICATE:
                self.duplicates += 1
            else:
                self.fired += 1
            self.last_error = ""
            log.info("schedule_fired", trigger=self.trigger.trigger_id, request_id=request_id, due=iso_z(due),
                     result=result.value, delay_ms=round((_now() - due).total_seconds() * 1000, 1))
            break
        self.last_fired = due
        await asyncio.to_thread(self.fire_log.record, self.trigger.trigger_id, due)


class ScheduleSource:
    """Every ``cron`` trigger's :class:`ScheduleRun`."""

    type = CRON_TRIGGER_TYPE

    def __init__(self, intake: Intake, fire_log: FireLog) -> None:
        self.intake = intake
        self.fire_log = fire_log
        self._runs: dict[str, ScheduleRun] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        runs, self._runs = self._runs, {}
        await asyncio.gather(*(run.stop() for run in runs.values()))

    async def apply(self, change: TriggerChange, trigger: SourceTrigger) -> None:
        old = self._runs.pop(trigger.trigger_id, None)
        if change is not TriggerChange.REMOVED and old is not None and old.trigger == trigger:
            self._runs[trigger.trigger_id] = old  # the same record again (a resync): keep its timer
            return
        if old is not None:
            await old.stop()
        if change is TriggerChange.REMOVED:
            await asyncio.to_thread(self.fire_log.forget, trigger.trigger_id)
            log.info("schedule_removed", trigger=trigger.trigger_id)
            return
        run = ScheduleRun(trigger, self.intake, self.fire_log)
        self._runs[trigger.trigger_id] = run
        run.start()
        log.info("schedule_applied", trigger=trigger.trigger_id, change=change.value,
                 schedule=trigger.config.get("Schedule"))

    def status(self, trigger_id: str) -> dict[str, Any] | None:
        run = self._runs.get(trigger_id)
        return run.status() if run is not None else None
