"""Schedules: the expression forms (5-field cron, EventBridge's cron(...) and rate(...), @every),
their validation, next-fire monotonicity (hypothesis), and the cron event source firing each due
time exactly once — across a restart and across two sources sharing one durable queue (a real
SQLite event queue, and two controllers' NATS JetStream queues on one real nats-server, refuse the
second enqueue of a request id, as they do for the controller).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.event_queue import QueuedEvent
from controller.event_queue.sqlite_backend import SQLiteEventQueue
from easyfaas.errors import FaasError
from eventsources.fire_log import FireLog
from eventsources.schedule import ScheduleError, parse_cron_config, parse_schedule, validate_cron_config
from eventsources.schedules import ScheduleSource, fire_request_id, scheduled_event
from eventsources.source import ConfigError, Refused, SourceTrigger, Submitted, TriggerChange

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 6, 0, 3, tzinfo=UTC)
FN = "brn:cloud:faas:bj:" + "a" * 32 + ":function:tick:$LATEST"


# ---- expressions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, tz, after, expected", [
    ("*/5 * * * *", "UTC", T0, datetime(2024, 5, 1, 6, 5, tzinfo=UTC)),
    ("cron(0/5 * * * ? *)", "UTC", T0, datetime(2024, 5, 1, 6, 5, tzinfo=UTC)),
    ("cron(0 10 * * ? *)", "UTC", T0, datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
    # 1 = Sunday in EventBridge: 2024-05-05 is a Sunday.
    ("cron(0 10 ? * 1 *)", "UTC", T0, datetime(2024, 5, 5, 10, 0, tzinfo=UTC)),
    ("cron(0 10 ? * MON-FRI *)", "Europe/Berlin", T0, datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
    ("cron(0 10 ? * 6L *)", "UTC", T0, datetime(2024, 5, 31, 10, 0, tzinfo=UTC)),  # last Friday
    ("cron(0 10 ? * 3#2 *)", "UTC", T0, datetime(2024, 5, 14, 10, 0, tzinfo=UTC)),  # 2nd Tuesday
    ("cron(0 10 L * ? *)", "UTC", T0, datetime(2024, 5, 31, 10, 0, tzinfo=UTC)),
    ("cron(0 0 1 1 ? 2030)", "UTC", T0, datetime(2030, 1, 1, 0, 0, tzinfo=UTC)),
    ("rate(5 minutes)", "UTC", T0, datetime(2024, 5, 1, 6, 5, tzinfo=UTC)),
    ("rate(1 hour)", "UTC", T0, datetime(2024, 5, 1, 7, 0, tzinfo=UTC)),
    ("rate(2 days)", "UTC", T0, datetime(2024, 5, 3, 0, 0, tzinfo=UTC)),  # 2-day periods from the epoch
    ("@every 30s", "UTC", T0, datetime(2024, 5, 1, 6, 0, 30, tzinfo=UTC)),
    ("@every 1m30s", "UTC", T0, datetime(2024, 5, 1, 6, 1, 30, tzinfo=UTC)),
    ("@hourly", "UTC", T0, datetime(2024, 5, 1, 7, 0, tzinfo=UTC)),
    # Berlin's spring-forward night: 02:30 does not exist on 2024-03-31; croniter moves on.
    ("30 3 * * *", "Europe/Berlin", datetime(2024, 3, 30, 12, tzinfo=UTC), datetime(2024, 3, 31, 1, 30, tzinfo=UTC)),
])
def test_next_due_times(text: str, tz: str, after: datetime, expected: datetime) -> None:
    # Intervals counted from the epoch here (no anchor).
    assert parse_schedule(text, tz).next_after(after) == expected


def test_intervals_count_from_the_anchor() -> None:
    anchor = datetime(2024, 5, 1, 6, 0, 1, tzinfo=UTC)
    schedule = parse_schedule("@every 7s")
    assert schedule.next_after(T0, anchor) == anchor + timedelta(seconds=7)
    assert schedule.next_after(anchor - timedelta(hours=1), anchor) == anchor
    assert schedule.latest_at_or_before(T0 + timedelta(seconds=20), T0, anchor) == anchor + timedelta(seconds=21)
    assert schedule.latest_at_or_before(T0 + timedelta(seconds=1), T0, anchor) is None


@pytest.mark.parametrize("text", [
    "cron(0 10 * * * *)",  # neither day field is '?'
    "cron(0 10 ? * ? *)",  # both are
    "cron(0 10 * * ?)",  # 5 fields in cron(...)
    "cron(0 10 ? * 8 *)",  # day-of-week 1-7
    "cron(0 10 ? * 1 1969)",
    "cron(? 10 * * ? *)",
    "rate(0 minutes)", "rate(1 hours)", "rate(5 hour)", "rate(5 seconds)", "rate(five minutes)",
    "@every 500ms", "@every", "@every 10x", "@every -5s",
    "61 * * * *", "* * *", "* * * * * * * *", "", "garbage", "@sometimes",
])
def test_invalid_schedules_are_refused(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(text)


@pytest.mark.parametrize("config, field", [
    ({"Schedule": "nope"}, "Config.Schedule"),
    ({}, "Config.Schedule"),
    ({"Schedule": "@every 1s", "Timezone": "Mars/Olympus"}, "Config.Timezone"),
    ({"Schedule": "@every 1s", "Timezone": 5}, "Config.Timezone"),
    ({"Schedule": "@every 1s", "Enabled": "yes"}, "Config.Enabled"),
    ({"Schedule": "@every 1s", "CatchUp": "all"}, "Config.CatchUp"),
    ({"Schedule": "@every 1s", "Extra": 1}, "Config.Extra"),
    ([], "Config"),
])
def test_invalid_configs_name_the_field(config: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cron_config(config)
    assert err.value.field == field


def test_config_defaults() -> None:
    assert validate_cron_config({"Schedule": "rate(5 minutes)"}) == {
        "Schedule": "rate(5 minutes)", "Timezone": "UTC", "Enabled": True, "CatchUp": "none"}
    assert validate_cron_config({"Schedule": "@every 1s", "Input": {"a": 1}})["Input"] == {"a": 1}


_EXPRESSIONS = st.sampled_from(["*/5 * * * *", "0 10 * * 1-5", "cron(0/15 * * * ? *)", "cron(0 10 ? * 6L *)",
                                "cron(30 2 ? * 1 *)", "rate(7 minutes)", "@every 13s", "0 2,3 * * *"])
_ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(_EXPRESSIONS, _ZONES, _TIMES, st.integers(min_value=0, max_value=10 ** 7))
def test_next_fire_is_after_and_monotonic(text: str, tz: str, t: datetime, gap: int) -> None:
    schedule = parse_schedule(text, tz)
    later = t + timedelta(seconds=gap)
    first, second = schedule.next_after(t), schedule.next_after(later)
    assert first > t and second > later
    assert first <= second
    assert first.microsecond == 0
    # Nothing is due strictly between t and its next due time.
    assert schedule.latest_at_or_before(first - timedelta(seconds=1), t) is None
    assert schedule.latest_at_or_before(first, t) == first


# ---- the event ------------------------------------------------------------------------------------


def test_scheduled_event_shape_and_deterministic_id() -> None:
    trigger = SourceTrigger("t1", "cron", FN, "acct1", {"Schedule": "@every 1s"})
    due = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)
    rid = fire_request_id("t1", due)
    assert rid == fire_request_id("t1", due) != fire_request_id("t1", due + timedelta(seconds=1))
    assert rid != fire_request_id("t2", due)
    event = scheduled_event(trigger, due, rid)
    assert event == {"version": "0", "id": rid, "detail-type": "Scheduled Event", "source": "aws.events",
                     "account": "acct1", "time": "2024-05-01T06:00:00Z", "region": "bj",
                     "resources": [f"brn:cloud:faas:bj:{'a' * 32}:trigger/t1"], "detail": {}}


# ---- the source, on a real durable queue --------------------------------------------------------


class QueueIntake:
    """The durable enqueue of a real SQLite event queue (its duplicate refusal included)."""

    def __init__(self, queue: SQLiteEventQueue) -> None:
        self.queue = queue
        self.duplicates = 0

    async def submit(self, trigger: SourceTrigger, event: str, request_id: str) -> Submitted:
        try:
            await self.queue.enqueue(QueuedEvent(request_id=request_id, function="fn", function_arn=trigger.function_brn,
                                                 account=trigger.uid, payload=event))
        except FaasError as err:
            if err.status == 409:
                self.duplicates += 1
                return Submitted.DUPLICATE
            raise Refused(err.status, err.code, str(err)) from None
        return Submitted.ACCEPTED

    async def known(self, request_id: str) -> bool:
        if await self.queue.record(request_id) is None:
            return False
        self.duplicates += 1
        return True

    async def outcome(self, request_id: str) -> dict[str, Any] | None:
        return None


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SQLiteEventQueue]:
    q = SQLiteEventQueue(str(tmp_path / "queue"), max_queued_per_function=10000, max_queued=10000,
                         record_ttl=3600, max_records=10000)
    await q.start()
    try:
        yield q
    finally:
        await q.close()


async def record_ids(queue: SQLiteEventQueue) -> list[str]:
    return [r.RequestId for r in await queue.records(account="acct1", limit=1000)]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def wait_for(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def every_second(catch_up: str = "none", **extra: Any) -> SourceTrigger:
    stamp = now_iso()
    return SourceTrigger("sched1", "cron", FN, "acct1",
                         {"Schedule": "@every 1s", "CatchUp": catch_up, **extra}, stamp, stamp)


@pytest.mark.slow  # waits for several real one-second due times
async def test_every_second_fires_each_due_time_once_across_restarts_and_controllers(
        queue: SQLiteEventQueue, tmp_path: Path) -> None:
    trigger = every_second()
    log_a, log_b = FireLog(tmp_path / "a"), FireLog(tmp_path / "b")
    intake_a, intake_b = QueueIntake(queue), QueueIntake(queue)
    a = ScheduleSource(intake_a, log_a)
    b = ScheduleSource(intake_b, log_b)  # a second controller on the same queue
    await a.apply(TriggerChange.ADDED, trigger)
    await b.apply(TriggerChange.ADDED, trigger)
    await wait_for(lambda: _at_least(queue, 3), "three due times")
    await a.stop()  # a restart: a new source on the same fire log
    a = ScheduleSource(intake_a, log_a)
    await a.apply(TriggerChange.ADDED, trigger)
    await wait_for(lambda: _at_least(queue, 6), "six due times")
    await a.stop()
    await b.stop()
    ids = await record_ids(queue)
    assert len(ids) == len(set(ids))
    assert intake_a.duplicates + intake_b.duplicates > 0, "the two sources never fired the same due time"
    # Each record's due time (from its event) is fired once: the duplicates were refused.
    deliveries = await queue.lease(1000, lambda _fn: 1000, 0.1)
    dues = [json.loads(d.event.payload)["time"] for d in deliveries]
    assert len(dues) == len(ids) and len(set(dues)) == len(dues)
    assert {d.event.request_id for d in deliveries} == {
        fire_request_id("sched1", datetime.fromisoformat(t.replace("Z", "+00:00"))) for t in dues}


async def _at_least(queue: SQLiteEventQueue, count: int) -> bool:
    return len(await record_ids(queue)) >= count


@pytest.mark.slow  # waits for several real one-second due times
async def test_restart_never_fires_a_due_time_twice(queue: SQLiteEventQueue, tmp_path: Path) -> None:
    trigger = every_second(catch_up="last")
    intake = QueueIntake(queue)
    log = FireLog(tmp_path / "fires")
    for _ in range(3):
        source = ScheduleSource(intake, log)
        await source.apply(TriggerChange.ADDED, trigger)
        before = len(await record_ids(queue))
        await wait_for(lambda: _at_least(queue, before + 2), "two more due times")
        status = source.status("sched1")
        assert status is not None and status["State"] == "scheduled" and status["LastFiredAt"] and status["NextFireAt"]
        await source.stop()
    ids = await record_ids(queue)
    assert len(ids) == len(set(ids)) >= 6
    last = log.last_fired("sched1")
    assert last is not None


async def test_catch_up_last_fires_the_latest_missed_due_time_once(queue: SQLiteEventQueue, tmp_path: Path) -> None:
    stamp = "2024-05-01T06:00:00Z"
    trigger = SourceTrigger("sched2", "cron", FN, "acct1", {"Schedule": "rate(1 day)", "CatchUp": "last"}, stamp, stamp)
    log = FireLog(tmp_path / "fires")
    log.record("sched2", datetime(2024, 5, 1, 6, tzinfo=UTC))
    intake = QueueIntake(queue)
    source = ScheduleSource(intake, log)
    await source.apply(TriggerChange.ADDED, trigger)
    await wait_for(lambda: _at_least(queue, 1), "the catch-up")
    await source.stop()
    deliveries = await queue.lease(10, lambda _fn: 10, 0.1)
    assert len(deliveries) == 1
    event = json.loads(deliveries[0].event.payload)
    latest = parse_schedule("rate(1 day)").latest_at_or_before(
        datetime.now(UTC), datetime(2024, 5, 1, 6, tzinfo=UTC), datetime(2024, 5, 1, 6, tzinfo=UTC))
    assert latest is not None and event["time"] == latest.strftime("%Y-%m-%dT%H:%M:%SZ")
    # And once only: a second start sees it fired.
    source = ScheduleSource(intake, log)
    await source.apply(TriggerChange.ADDED, trigger)
    await asyncio.sleep(0.3)
    await source.stop()
    assert len(await record_ids(queue)) == 1


async def test_catch_up_none_skips_what_was_missed(queue: SQLiteEventQueue, tmp_path: Path) -> None:
    stamp = "2024-05-01T06:00:00Z"
    trigger = SourceTrigger("sched3", "cron", FN, "acct1", {"Schedule": "rate(1 day)"}, stamp, stamp)
    log = FireLog(tmp_path / "fires")
    log.record("sched3", datetime(2024, 5, 1, 6, tzinfo=UTC))
    source = ScheduleSource(QueueIntake(queue), log)
    await source.apply(TriggerChange.ADDED, trigger)
    await asyncio.sleep(0.3)
    status = source.status("sched3")
    await source.stop()
    assert await record_ids(queue) == []
    assert status is not None and status["NextFireAt"] > now_iso()


async def test_input_replaces_the_scheduled_event_and_disabled_does_not_fire(
        queue: SQLiteEventQueue, tmp_path: Path) -> None:
    source = ScheduleSource(QueueIntake(queue), FireLog(tmp_path / "fires"))
    await source.apply(TriggerChange.ADDED, every_second(Input={"hello": "world"}))
    await wait_for(lambda: _at_least(queue, 1), "a fire")
    disabled = every_second(Enabled=False)
    await source.apply(TriggerChange.CHANGED, disabled)
    assert source.status("sched1")["State"] in ("disabled", "starting")
    await asyncio.sleep(0.1)
    assert source.status("sched1")["State"] == "disabled"
    count = len(await record_ids(queue))
    await asyncio.sleep(1.5)
    assert len(await record_ids(queue)) == count
    await source.apply(TriggerChange.REMOVED, disabled)
    assert source.status("sched1") is None
    await source.stop()
    deliveries = await queue.lease(1000, lambda _fn: 1000, 0.1)
    assert deliveries and all(json.loads(d.event.payload) == {"hello": "world"} for d in deliveries)


async def test_an_invalid_stored_config_is_an_error_state(queue: SQLiteEventQueue, tmp_path: Path) -> None:
    source = ScheduleSource(QueueIntake(queue), FireLog(tmp_path / "fires"))
    await source.apply(TriggerChange.ADDED, SourceTrigger("bad", "cron", FN, "acct1", {"Schedule": "@every 1ms"}))
    await asyncio.sleep(0.05)
    status = source.status("bad")
    await source.stop()
    assert status is not None and status["State"] == "error" and "Config.Schedule" in status["LastError"]


@pytest.mark.slow  # waits for several real one-second due times
async def test_two_controllers_on_one_nats_queue_fire_each_due_time_once(tmp_path: Path) -> None:
    from controller.event_queue.nats_backend import NatsEventQueue
    from tests.nats_harness import NatsServer

    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats")
    server.start()
    queues = [NatsEventQueue(server.url, max_queued_per_function=10000, max_queued=10000, record_ttl=3600)
              for _ in range(2)]
    try:
        for q in queues:
            await q.start()
        intakes = [QueueIntake(q) for q in queues]
        sources = [ScheduleSource(intake, FireLog(tmp_path / f"fires{n}")) for n, intake in enumerate(intakes)]
        trigger = every_second()
        for source in sources:
            await source.apply(TriggerChange.ADDED, trigger)

        async def enough() -> bool:
            return len(await queues[0].records(account="acct1", limit=1000)) >= 4

        await wait_for(enough, "four due times")
        for source in sources:
            await source.stop()
        ids = [r.RequestId for r in await queues[0].records(account="acct1", limit=1000)]
        assert len(ids) == len(set(ids))
        assert sum(i.duplicates for i in intakes) > 0, "the two controllers never fired the same due time"
        deliveries = await queues[0].lease(1000, lambda _fn: 1000, 1.0)
        times = [json.loads(d.event.payload)["time"] for d in deliveries]
        assert len(times) == len(ids) and len(set(times)) == len(times)
    finally:
        for q in queues:
            await q.close()
        server.stop()
