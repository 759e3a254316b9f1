"""The event-source supervisor against a real stubs application (its trigger API and change feed
over HTTP): a trigger created, changed, disabled or deleted reaches its source at once (the feed is
a long poll), triggers of other types are left alone, a snapshot of every trigger (the first read,
or after stubs restarted) replaces what the supervisor knew, and the trigger API validates the
event sources' Configs field by field.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from easyfaas.triggers import TriggerChanges
from eventsources.source import SourceTrigger, TriggerChange
from eventsources.supervisor import EventSourceSupervisor
from tests.fakes.stubs_app import UID, create, start_client, write_runtimes


class RecordingSource:
    """An event source that only notes what it is told (the supervisor is what is tested)."""

    def __init__(self, kind: str) -> None:
        self.type = kind
        self.changes: list[tuple[TriggerChange, SourceTrigger]] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def apply(self, change: TriggerChange, trigger: SourceTrigger) -> None:
        self.changes.append((change, trigger))

    def status(self, trigger_id: str) -> dict[str, Any] | None:
        return {"State": "noted"}


@pytest.fixture
async def stubs(tmp_path: Path) -> AsyncIterator[TestClient]:
    write_runtimes(tmp_path / "runtime")
    client = await start_client(tmp_path / "funcData", tmp_path / "runtime")
    try:
        yield client
    finally:
        await client.close()


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    resp = await client.post(path, data=json.dumps(body), headers={"X-easyfaas-Account-Id": UID})
    return resp.status, await resp.json()


def supervisor_of(client: TestClient, *sources: RecordingSource) -> EventSourceSupervisor:
    return EventSourceSupervisor(str(client.make_url("/v1/trigger-changes")), {s.type: s for s in sources},
                                 poll_wait=5.0, retry_delay=0.1)


async def test_changes_reach_their_source_at_once(stubs: TestClient) -> None:
    await create(stubs, "tick", {"Runtime": "python3"})
    cron, mqtt = RecordingSource("cron"), RecordingSource("mqtt")
    supervisor = supervisor_of(stubs, cron, mqtt)
    await supervisor.start()
    try:
        await until(lambda: supervisor.synced.is_set(), "the first read of the feed")
        status, trigger = await post(stubs, "/v1/functions/tick/triggers",
                                     {"Type": "cron", "Config": {"Schedule": "rate(5 minutes)"}})
        assert status == 201, trigger
        tid = trigger["TriggerId"]
        await until(lambda: len(cron.changes) == 1, "the trigger added")
        change, seen = cron.changes[0]
        assert change is TriggerChange.ADDED and seen.trigger_id == tid and seen.uid == UID
        assert seen.config == {"Schedule": "rate(5 minutes)", "Timezone": "UTC", "Enabled": True, "CatchUp": "none"}
        assert seen.function_brn.endswith(":function:tick:$LATEST")
        assert supervisor.status(tid) == {"State": "noted"}

        resp = await stubs.put(f"/v1/functions/tick/triggers/{tid}", headers={"X-easyfaas-Account-Id": UID},
                               data=json.dumps({"Config": {"Schedule": "rate(5 minutes)", "Enabled": False}}))
        assert resp.status == 200, await resp.text()
        await until(lambda: len(cron.changes) == 2, "the trigger changed (disabled)")
        assert cron.changes[1][0] is TriggerChange.CHANGED and cron.changes[1][1].config["Enabled"] is False

        status, http = await post(stubs, "/v1/functions/tick/triggers",
                                  {"Type": "http", "Config": {"Methods": ["GET"], "Path": "/tick"}})
        assert status == 201, http
        resp = await stubs.delete(f"/v1/functions/tick/triggers/{tid}", headers={"X-easyfaas-Account-Id": UID})
        assert resp.status == 204
        await until(lambda: len(cron.changes) == 3, "the trigger removed")
        assert cron.changes[2][0] is TriggerChange.REMOVED and cron.changes[2][1].trigger_id == tid
        assert mqtt.changes == []  # neither the cron trigger nor the http one is its
        assert supervisor.status(tid) is None and supervisor.status(http["TriggerId"]) is None
    finally:
        await supervisor.close()
    assert cron.started and cron.stopped and mqtt.stopped


async def test_the_first_read_is_the_snapshot_and_a_later_snapshot_replaces_it(stubs: TestClient) -> None:
    await create(stubs, "dev", {"Runtime": "python3"})
    mqtt = RecordingSource("mqtt")
    config = {"Broker": "mqtt://127.0.0.1:1883", "Topic": "a/+"}
    _, first = await post(stubs, "/v1/functions/dev/triggers", {"Type": "mqtt", "Config": config})
    _, second = await post(stubs, "/v1/functions/dev/triggers", {"Type": "mqtt", "Config": config})
    supervisor = supervisor_of(stubs, mqtt)
    await supervisor.start()
    try:
        await until(lambda: len(mqtt.changes) == 2, "both triggers from the snapshot")
        assert {t.trigger_id for _, t in mqtt.changes} == {first["TriggerId"], second["TriggerId"]}
        # What a reader that fell behind (or saw stubs restart) gets: every trigger, here only
        # the second. The first is removed; the unchanged second is not told again.
        resp = await stubs.get("/v1/trigger-changes", params={"after": "-1"})
        snapshot = TriggerChanges.from_dict(await resp.json())
        assert snapshot.Triggers is not None
        snapshot.Triggers = [t for t in snapshot.Triggers if t.TriggerId == second["TriggerId"]]
        snapshot.Changes = []
        await supervisor._apply(snapshot)
        assert len(mqtt.changes) == 3
        assert mqtt.changes[2][0] is TriggerChange.REMOVED and mqtt.changes[2][1].trigger_id == first["TriggerId"]
    finally:
        await supervisor.close()


async def test_a_feed_that_is_unreachable_is_retried(tmp_path: Path) -> None:
    cron = RecordingSource("cron")
    supervisor = EventSourceSupervisor("http://127.0.0.1:1/v1/trigger-changes", {"cron": cron}, retry_delay=0.05)
    await supervisor.start()
    await asyncio.sleep(0.3)
    assert not supervisor.synced.is_set() and cron.changes == []
    await supervisor.close()


@pytest.mark.parametrize("kind, config, field", [
    ("cron", {"Schedule": "cron(0 10 * * * *)"}, "Config.Schedule"),
    ("cron", {"Schedule": "@every 1s", "Timezone": "Not/AZone"}, "Config.Timezone"),
    ("cron", {"Schedule": "@every 1s", "CatchUp": "all"}, "Config.CatchUp"),
    ("mqtt", {"Broker": "http://h", "Topic": "a"}, "Config.Broker"),
    ("mqtt", {"Broker": "mqtt://h", "Topic": "a#"}, "Config.Topic"),
    ("mqtt", {"Broker": "mqtt://h", "Topic": "a", "ReplyTopic": "r/#"}, "Config.ReplyTopic"),
])
async def test_the_trigger_api_refuses_bad_configs_naming_the_field(stubs: TestClient, kind: str,
                                                                   config: dict[str, Any], field: str) -> None:
    await create(stubs, "f", {"Runtime": "python3"})
    status, body = await post(stubs, "/v1/functions/f/triggers", {"Type": kind, "Config": config})
    assert status == 400 and body["Code"] == "ValidationException" and body["Cause"].startswith(field + ":"), body
