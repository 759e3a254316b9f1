"""Event sources end to end, with a real pod and a real Mosquitto on a loopback port: triggers made
through stubs' trigger API reach the controller's event sources through the change feed, and every
event goes through the durable queue (its records are what is counted).

* MQTT QoS 1 messages → one invocation each; ``kill -9`` of the controller mid-stream and a
  Mosquitto restart mid-stream: every message ends up invoked (duplicates allowed, none lost);
  a message published after the restart has its result on the ReplyTopic, received by the test's
  own subscriber (a persistent session: what is published while it reconnects is kept for it).
* ``@every 1s`` fires; ``kill -9`` of the controller does not fire a due time twice (the records'
  request ids are derived from (trigger, due time)); deleting the trigger stops it.
* Bad Configs → 400 naming the field; a broker that is down → the status says so; a message over
  the event size limit is rejected (counted in the status) and the next one still runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from eventsources.schedules import fire_request_id
from bench.mosquitto import Mosquitto
from easyfaas.function_code import ACCOUNT, b64zip
from tests.mqtt_harness import Publisher, Subscriber
from tests.pod_harness import LivePod, live_pod, records, unique, wait_healthy

pytestmark = pytest.mark.e2e

H = {"X-easyfaas-Account-Id": ACCOUNT}
ECHO = "def handler(event, context):\n    return {'echo': event, 'request': context.aws_request_id}\n"


@pytest.fixture
def pod_and_broker(tmp_path: Path) -> Iterator[tuple[LivePod, Mosquitto]]:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        for lp in live_pod(container_num=3, funclet_args=("--max-sandboxes", "4"),
                           controller_args=("--event-retry-base", "0.2s")):
            lp.pod.supervise(poll=0.1)
            yield lp, broker
    finally:
        broker.stop()


async def trigger_of(lp: LivePod, name: str, trigger_id: str) -> dict[str, Any]:
    async with lp.session().get(f"{lp.config.stubs_url}/v1/functions/{name}/triggers/{trigger_id}",
                                headers=H) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def create_trigger(lp: LivePod, name: str, kind: str, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with lp.session().post(f"{lp.config.stubs_url}/v1/functions/{name}/triggers", headers=H,
                                 data=json.dumps({"Type": kind, "Config": config})) as resp:
        return resp.status, await resp.json()


async def source_status(lp: LivePod, trigger_id: str) -> dict[str, Any] | None:
    try:
        async with lp.session().get(f"{lp.config.controller_url}/v1/event-sources/{trigger_id}", headers=H) as resp:
            return await resp.json() if resp.status == 200 else None
    except Exception:  # noqa: BLE001 - the controller is restarting
        return None


async def echoed(lp: LivePod, name: str) -> list[dict[str, Any]]:
    """The events the function received, from its succeeded records' results."""
    try:
        found = await records(lp, name)
    except Exception:  # noqa: BLE001 - the controller is restarting
        return []
    out = []
    for record in found.values():
        if record["Status"] == "succeeded":
            result = record["Result"]
            result = json.loads(result) if isinstance(result, str) else result
            out.append({**result["echo"], "_request_id": record["RequestId"]})
    return out


async def connected(lp: LivePod, trigger_id: str) -> bool:
    status = await source_status(lp, trigger_id)
    return bool(status and status.get("Connected"))


async def test_bad_configs_are_refused_naming_the_field(pod_and_broker: tuple[LivePod, Mosquitto]) -> None:
    lp, broker = pod_and_broker
    name = unique("evbad")
    await lp.create(name)
    try:
        for kind, config, field in [
            ("cron", {"Schedule": "cron(0 10 * * * *)"}, "Config.Schedule"),
            ("cron", {"Schedule": "@every 1s", "Timezone": "Nowhere/City"}, "Config.Timezone"),
            ("cron", {"Schedule": "rate(1 minutes)"}, "Config.Schedule"),
            ("mqtt", {"Broker": "tcp://h:1883", "Topic": "a"}, "Config.Broker"),
            ("mqtt", {"Broker": broker.url, "Topic": "a/#/b"}, "Config.Topic"),
            ("mqtt", {"Broker": broker.url, "Topic": "a", "Qos": 2}, "Config.Qos"),
        ]:
            status, body = await create_trigger(lp, name, kind, config)
            assert status == 400, body
            assert body["Code"] == "ValidationException" and body["Cause"].startswith(field), (config, body)
    finally:
        await lp.close_clients()


async def test_mqtt_messages_survive_a_controller_kill_and_a_broker_restart(
        pod_and_broker: tuple[LivePod, Mosquitto]) -> None:
    lp, broker = pod_and_broker
    name = unique("evmq")
    await lp.create(name, Code=b64zip({"index.py": ECHO}), PodConcurrentQuota=4)
    status, trigger = await create_trigger(lp, name, "mqtt", {"Broker": broker.url, "Topic": "dev/+/temp", "Qos": 1,
                                                               "ReplyTopic": "replies/{1}"})
    assert status == 201, trigger
    tid = trigger["TriggerId"]
    replies = Subscriber(broker.port, "replies/#")
    pub = Publisher(broker.port)
    sent: list[str] = []

    def publish(count: int) -> None:
        for _ in range(count):
            n = str(len(sent))
            pub.publish(f"dev/d{n}/temp", n)
            sent.append(n)

    try:
        await lp.until(lambda: connected(lp, tid), timeout=30, what="the trigger's MQTT connection")
        publish(30)
        await lp.until(lambda: _count(lp, name, 5), timeout=60, what="some invocations")
        old = lp.pod.pid("controller")
        lp.pod.kill("controller", signal.SIGKILL)  # mid-stream: some enqueued, some not yet acknowledged
        publish(30)  # to the broker while the controller is down
        await wait_healthy(lp, "controller", old)
        await lp.until(lambda: connected(lp, tid), timeout=30, what="the MQTT connection after the restart")
        publish(20)
        pub.close()
        broker.stop()
        broker.start()
        pub = Publisher(broker.port)
        publish(20)

        async def all_invoked() -> bool:
            return {e["payload"] for e in await echoed(lp, name)} >= set(sent)

        await lp.until(all_invoked, timeout=120, what=f"all {len(sent)} messages invoked")
        events = await echoed(lp, name)
        sample = next(e for e in events if e["payload"] == "7")
        assert sample["topic"] == "dev/d7/temp" and sample["qos"] == 1 and sample["isBase64Encoded"] is False
        assert {"retain", "messageId", "receivedAt"} <= set(sample)
        status_now = await trigger_of(lp, name, tid)
        assert status_now["State"] == "connected" and status_now["Connected"] is True and status_now["LastMessageAt"]
        # The reply of a message published after the broker restart, on the subscriber's resumed session.
        pub.publish("dev/after/temp", "after")

        async def replied_after() -> bool:
            return any(topic == "replies/after" and json.loads(payload)["echo"]["payload"] == "after"
                       for topic, payload in list(replies.messages))

        await lp.until(replied_after, timeout=120, what="the reply on replies/after")
    finally:
        pub.close()
        replies.close()
        await lp.close_clients()


async def _count(lp: LivePod, name: str, count: int) -> bool:
    return len(await echoed(lp, name)) >= count


async def test_every_second_fires_once_per_due_time_across_a_controller_kill(
        pod_and_broker: tuple[LivePod, Mosquitto]) -> None:
    lp, _ = pod_and_broker
    name = unique("evcr")
    await lp.create(name, Code=b64zip({"index.py": ECHO}), PodConcurrentQuota=4)
    status, trigger = await create_trigger(lp, name, "cron", {"Schedule": "@every 1s", "CatchUp": "last"})
    assert status == 201, trigger
    tid = trigger["TriggerId"]
    try:
        await lp.until(lambda: _count(lp, name, 3), timeout=60, what="three scheduled invocations")
        status_now = await trigger_of(lp, name, tid)  # stubs' GET with the live status merged
        assert status_now["State"] == "scheduled" and status_now["NextFireAt"] and status_now["LastFiredAt"]
        assert status_now["Config"]["Schedule"] == "@every 1s"
        old = lp.pod.pid("controller")
        lp.pod.kill("controller", signal.SIGKILL)
        await wait_healthy(lp, "controller", old)
        before = len(await echoed(lp, name))
        await lp.until(lambda: _count(lp, name, before + 3), timeout=60, what="firing after the restart")
        async with lp.session().delete(f"{lp.config.stubs_url}/v1/functions/{name}/triggers/{tid}",
                                       headers=H) as resp:
            assert resp.status == 204
        await lp.until(lambda: _gone(lp, tid), timeout=10, what="the schedule removed from the controller")
        events = await echoed(lp, name)
        times = [e["time"] for e in events]
        assert len(times) == len(set(times)), "a due time fired twice"
        for e in events:
            assert e["detail-type"] == "Scheduled Event" and e["source"] == "aws.events" and e["detail"] == {}
            assert e["account"] == ACCOUNT and e["resources"] == [f"{trigger['FunctionBrn'].rsplit(':', 3)[0]}"
                                                                  f":trigger/{tid}"]
            due = datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
            assert e["_request_id"] == e["id"] == fire_request_id(tid, due)
        async with lp.session().get(f"{lp.config.controller_url}/metrics") as resp:
            metrics = await resp.text()
        assert any(line.startswith("easyfaas_trigger_firings") and 'trigger="timer"' in line and name in line
                   for line in metrics.splitlines()), "the schedule's firings are not in /metrics"
        # Nothing fires after the removal.
        settled = len(await echoed(lp, name))
        await asyncio.sleep(2.5)
        assert len(await echoed(lp, name)) == settled
    finally:
        await lp.close_clients()


async def _gone(lp: LivePod, tid: str) -> bool:
    return await source_status(lp, tid) is None


async def test_a_broker_that_is_down_is_reported(pod_and_broker: tuple[LivePod, Mosquitto]) -> None:
    lp, broker = pod_and_broker
    name = unique("evdn")
    await lp.create(name)
    status, trigger = await create_trigger(lp, name, "mqtt", {"Broker": "mqtt://127.0.0.1:1", "Topic": "x"})
    assert status == 201, trigger
    try:
        async def reported() -> bool:
            s = await source_status(lp, trigger["TriggerId"])
            return bool(s and s["LastError"] and s["Connected"] is False)

        await lp.until(reported, timeout=30, what="the connection error in the status")
        merged = await trigger_of(lp, name, trigger["TriggerId"])
        assert merged["Connected"] is False and merged["LastError"] and merged["State"] in ("error", "reconnecting")
    finally:
        await lp.close_clients()


async def test_a_message_over_the_event_limit_is_rejected_and_the_stream_goes_on(
        pod_and_broker: tuple[LivePod, Mosquitto]) -> None:
    lp, broker = pod_and_broker
    name = unique("evbig")
    await lp.create(name, Code=b64zip({"index.py": ECHO}))
    status, trigger = await create_trigger(lp, name, "mqtt", {"Broker": broker.url, "Topic": "big", "Qos": 1})
    assert status == 201, trigger
    tid = trigger["TriggerId"]
    pub = Publisher(broker.port)
    try:
        await lp.until(lambda: connected(lp, tid), timeout=30, what="the trigger's MQTT connection")
        pub.publish("big", "x" * (1100 << 10))  # over the 1 MiB event limit
        pub.publish("big", "small")

        async def small_invoked() -> bool:
            return any(e["payload"] == "small" for e in await echoed(lp, name))

        await lp.until(small_invoked, timeout=60, what="the message after the rejected one")
        status_now = await source_status(lp, tid)
        assert status_now is not None and status_now["Rejected"] == 1 and status_now["Connected"] is True
        assert "RequestTooLarge" in status_now["LastError"] or "rejected" in status_now["LastError"]
        assert len(await echoed(lp, name)) == 1
    finally:
        pub.close()
        await lp.close_clients()
