"""The mqtt event source against a real Mosquitto broker on a loopback port (its own config,
persistence in a temporary directory), with an in-process intake that records what it is given
(the controller's durable intake is exercised end to end in tests/test_event_sources_e2e.py).

Covered: the event's shape (text and binary payloads), the PUBACK only after the enqueue returned
(a source stopped while an enqueue is held gets the message again in its next session), retries of
a retryable refusal, rejection of an event the intake will never take (the connection goes on),
a broker that is down or refuses the credentials (State/LastError, then recovery), a broker
restarted mid-stream (no QoS 1 message lost), and replies on the ReplyTopic, also across a broker
restart (a result that finished while the broker was down is replied once it is back); the client
on the event loop (no paho thread), and over TLS messages of several TLS records.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from bench.mosquitto import Mosquitto
from tests.mqtt_harness import Publisher, Subscriber
from tests.tls_harness import issue, make_ca

from eventsources.mqtt import MqttSource, default_client_id, message_event
from eventsources.mqtt_config import check_topic_filter, parse_mqtt_config, reply_topic_for
from eventsources.source import ConfigError, Refused, SourceTrigger, Submitted, TriggerChange

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto (make install)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RecordingIntake:
    """Takes every event (keeps it in order); can hold enqueues or refuse them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.hold: asyncio.Event | None = None
        self.refuse: Refused | None = None
        self.refusals = 0
        self.finished: dict[str, dict[str, Any]] = {}
        self.answered: set[str] = set()  # request ids whose finished record a caller was given

    async def submit(self, trigger: SourceTrigger, event: str, request_id: str) -> Submitted:
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse is not None:
            self.refusals += 1
            raise self.refuse
        self.events.append(json.loads(event))
        self.ids.append(request_id)
        return Submitted.ACCEPTED

    async def known(self, request_id: str) -> bool:
        return False  # the enqueue's own duplicate refusal is what these tests exercise

    async def outcome(self, request_id: str) -> dict[str, Any] | None:
        record = self.finished.get(request_id)
        if record is not None:
            self.answered.add(request_id)
        return record


def trigger_of(broker: Mosquitto, topic: str, **config: Any) -> SourceTrigger:
    tid = uuid.uuid4().hex
    return SourceTrigger(trigger_id=tid, type="mqtt", function_brn="brn:cloud:faas:bj:x:function:f:$LATEST",
                         uid="acct", config={"Broker": broker.url, "Topic": topic, "Qos": 1, **config})


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def started(intake: RecordingIntake, trigger: SourceTrigger) -> MqttSource:
    source = MqttSource(intake)
    await source.start()
    await source.apply(TriggerChange.ADDED, trigger)
    await until(lambda: (source.status(trigger.trigger_id) or {}).get("Connected") is True, "the connection")
    await asyncio.sleep(0.1)  # the SUBACK
    return source


# ---- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("config, field", [
    ({"Broker": "http://h:1883", "Topic": "a"}, "Config.Broker"),
    ({"Broker": "mqtt://", "Topic": "a"}, "Config.Broker"),
    ({"Broker": "mqtt://h:99999", "Topic": "a"}, "Config.Broker"),
    ({"Broker": "mqtt://u:p@h", "Topic": "a"}, "Config.Broker"),
    ({"Broker": "mqtt://h", "Topic": "a/b#"}, "Config.Topic"),
    ({"Broker": "mqtt://h", "Topic": "a/#/b"}, "Config.Topic"),
    ({"Broker": "mqtt://h", "Topic": "a/b+/c"}, "Config.Topic"),
    ({"Broker": "mqtt://h", "Topic": ""}, "Config.Topic"),
    ({"Broker": "mqtt://h", "Topic": "a", "Qos": 2}, "Config.Qos"),
    ({"Broker": "mqtt://h", "Topic": "a", "Qos": True}, "Config.Qos"),
    ({"Broker": "mqtt://h", "Topic": "a", "ClientId": "bad id!"}, "Config.ClientId"),
    ({"Broker": "mqtt://h", "Topic": "a", "Password": "p"}, "Config.Password"),
    ({"Broker": "mqtt://h", "Topic": "a", "ReplyTopic": "r/+"}, "Config.ReplyTopic"),
    ({"Broker": "mqtt://h", "Topic": "a", "ReplyTopic": "r/{x}"}, "Config.ReplyTopic"),
    ({"Broker": "mqtt://h", "Topic": "a", "Other": 1}, "Config.Other"),
    ("nope", "Config"),
])
def test_invalid_configs_name_the_field(config: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mqtt_config(config)
    assert err.value.field == field


def test_valid_config_is_normalised() -> None:
    cfg = parse_mqtt_config({"Broker": "mqtts://broker.local", "Topic": "sensors/+/temp", "Qos": 0,
                             "ReplyTopic": "replies/{1}"})
    assert (cfg.host, cfg.port, cfg.tls) == ("broker.local", 8883, True)
    assert cfg.to_dict() == {"Broker": "mqtts://broker.local", "Topic": "sensors/+/temp", "Qos": 0,
                             "ReplyTopic": "replies/{1}"}
    assert check_topic_filter("$share/g/a/#") == "$share/g/a/#"
    assert reply_topic_for("replies/{1}", "sensors/kitchen/temp") == "replies/kitchen"
    assert reply_topic_for("r/{topic}", "a/b") == "r/a/b"
    assert reply_topic_for("r/{5}", "a/b") is None


def test_message_event_shape() -> None:
    text = message_event("a/b", "héllo".encode(), 1, False, 7, 1714543200.5)
    assert text == {"topic": "a/b", "payload": "héllo", "isBase64Encoded": False, "qos": 1, "retain": False,
                    "messageId": 7, "receivedAt": "2024-05-01T06:00:00.500Z"}
    binary = message_event("a/b", b"\xff\x00\x01", 0, True, 0, 0.0)
    assert binary["isBase64Encoded"] is True and base64.b64decode(binary["payload"]) == b"\xff\x00\x01"
    assert binary["retain"] is True


# ---- with the broker -----------------------------------------------------------------------------


async def test_messages_become_events_and_are_acknowledged(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "sensors/+/temp")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        pub.publish("sensors/kitchen/temp", "21.5")
        pub.publish("sensors/cellar/temp", b"\x80\x81")
        pub.publish("sensors/cellar/humidity", "ignored")
        await until(lambda: len(intake.events) == 2, "two events")
        first, second = intake.events
        assert first["topic"] == "sensors/kitchen/temp" and first["payload"] == "21.5"
        assert first["isBase64Encoded"] is False and first["qos"] == 1
        assert second["isBase64Encoded"] is True and base64.b64decode(second["payload"]) == b"\x80\x81"
        status = source.status(trigger.trigger_id)
        assert status is not None and status["State"] == "connected" and status["LastMessageAt"]
        await source.stop()
        # Acknowledged: the next session of the same client id gets nothing again.
        again = await started(intake, trigger)
        await asyncio.sleep(0.5)
        assert len(intake.events) == 2
        await again.stop()
    finally:
        pub.close()
        await source.stop()


async def test_an_unfinished_enqueue_is_not_acknowledged(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "held/#")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        intake.hold = asyncio.Event()
        for n in range(5):
            pub.publish(f"held/{n}", str(n))
        await until(lambda: source.status(trigger.trigger_id)["Received"] == 5, "five messages received")
        await source.stop()  # as a controller dying with the enqueues under way
        assert intake.events == []
        intake.hold = None
        again = await started(intake, trigger)
        await until(lambda: len(intake.events) == 5, "the five messages delivered again")
        assert sorted(e["payload"] for e in intake.events) == ["0", "1", "2", "3", "4"]
        await again.stop()
    finally:
        pub.close()
        await source.stop()


async def test_a_retryable_refusal_holds_the_message_until_it_is_taken(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "retry")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        intake.refuse = Refused(503, "EventStoreUnavailableException", "the store is down")
        pub.publish("retry", "x")
        await until(lambda: intake.refusals >= 2, "the enqueue tried again")
        assert "retrying" in source.status(trigger.trigger_id)["LastError"]
        intake.refuse = None
        await until(lambda: len(intake.events) == 1, "the event taken")
    finally:
        pub.close()
        await source.stop()


async def test_a_rejected_message_is_recorded_and_the_connection_goes_on(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "big")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        intake.refuse = Refused(413, "RequestTooLargeException", "too large")
        pub.publish("big", "x" * 2000)
        await until(lambda: source.status(trigger.trigger_id)["Rejected"] == 1, "the rejection")
        assert "rejected" in source.status(trigger.trigger_id)["LastError"]
        intake.refuse = None
        pub.publish("big", "small")
        await until(lambda: len(intake.events) == 1, "the next message")
        assert intake.events[0]["payload"] == "small"
        assert source.status(trigger.trigger_id)["Connected"] is True
    finally:
        pub.close()
        await source.stop()


async def test_a_broker_that_is_down_is_reported_and_retried(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path)
    intake = RecordingIntake()
    trigger = trigger_of(server, "late")
    source = MqttSource(intake)
    await source.apply(TriggerChange.ADDED, trigger)
    try:
        await until(lambda: (source.status(trigger.trigger_id) or {}).get("LastError"), "the error reported")
        status = source.status(trigger.trigger_id)
        assert status["Connected"] is False and status["State"] in ("error", "reconnecting")
        server.start()
        await until(lambda: source.status(trigger.trigger_id)["Connected"] is True, "the connection", timeout=40)
        assert source.status(trigger.trigger_id)["LastError"] is None
    finally:
        await source.stop()
        server.stop()


async def test_refused_credentials_are_reported(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path, users={"device": "secret"})
    server.start()
    intake = RecordingIntake()
    wrong = trigger_of(server, "auth", Username="device", Password="wrong")
    right = trigger_of(server, "auth", Username="device", Password="secret")
    source = MqttSource(intake)
    try:
        await source.apply(TriggerChange.ADDED, wrong)
        await until(lambda: (source.status(wrong.trigger_id) or {}).get("State") == "error", "the refusal")
        status = source.status(wrong.trigger_id)
        assert status["Connected"] is False and "refused" in status["LastError"]
        # And it keeps trying (with back-off): more connection attempts reach the broker.
        await until(lambda: server.log().count("New connection") >= 3, "the connection retried")
        await source.apply(TriggerChange.ADDED, right)
        await until(lambda: source.status(right.trigger_id)["Connected"] is True, "the good credentials")
    finally:
        await source.stop()
        server.stop()


async def test_broker_restart_mid_stream_loses_no_qos1_message(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "stream/+")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    sent = 0
    try:
        for _ in range(100):
            pub.publish(f"stream/{sent}", str(sent))
            sent += 1
        await until(lambda: len(intake.events) == sent, "the first messages enqueued")
        # Some messages held unacknowledged (their enqueue under way) when the broker goes away.
        intake.hold = asyncio.Event()
        for _ in range(20):
            pub.publish(f"stream/{sent}", str(sent))
            sent += 1
        await until(lambda: source.status(trigger.trigger_id)["Received"] >= sent, "the held messages received")
        pub.close()
        broker.stop()
        intake.hold.set()  # their enqueues finish while the broker is down: not acknowledged
        intake.hold = None
        await until(lambda: len(intake.events) == sent, "the held enqueues done")
        await until(lambda: source.status(trigger.trigger_id)["Connected"] is False, "the disconnect")
        broker.start()
        pub = Publisher(broker.port)
        for _ in range(100):
            pub.publish(f"stream/{sent}", str(sent))
            sent += 1
        await until(lambda: {e["payload"] for e in intake.events} == {str(n) for n in range(sent)},
                    "every message delivered", timeout=60)
    finally:
        pub.close()
        await source.stop()


async def test_results_are_published_on_the_reply_topic(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "ask/+", ReplyTopic="answer/{1}")
    replies = Subscriber(broker.port, "answer/#")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        await until(lambda: replies.ready, "the reply subscription")
        pub.publish("ask/kitchen", "q1")
        await until(lambda: len(intake.ids) == 1, "the event")
        intake.finished[intake.ids[0]] = {"Status": "succeeded", "Result": {"answer": 42}}
        await until(lambda: len(replies.messages) == 1, "the reply")
        topic, payload = replies.messages[0]
        assert topic == "answer/kitchen" and json.loads(payload) == {"answer": 42}
        pub.publish("ask/cellar", "q2")
        await until(lambda: len(intake.ids) == 2, "the second event")
        intake.finished[intake.ids[1]] = {"Status": "failed", "Error": {"errorType": "ValueError"}}
        await until(lambda: len(replies.messages) == 2, "the error reply")
        topic, payload = replies.messages[1]
        assert topic == "answer/cellar" and json.loads(payload)["status"] == "failed"
    finally:
        pub.close()
        replies.close()
        await source.stop()


async def test_replies_resume_after_a_broker_restart(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "ask/+", ReplyTopic="answer/{1}")
    replies = Subscriber(broker.port, "answer/#")  # a persistent session: it misses nothing while away
    source = await started(intake, trigger)
    pub = Publisher(broker.port)

    def replied(device: str) -> list[dict[str, Any]]:
        return [json.loads(payload) for topic, payload in list(replies.messages) if topic == f"answer/{device}"]

    try:
        await until(lambda: replies.ready, "the reply subscription")
        pub.publish("ask/before", "q0")
        pub.publish("ask/during", "q1")
        await until(lambda: len(intake.ids) == 2, "two events")
        intake.finished[intake.ids[0]] = {"Status": "succeeded", "Result": {"n": 0}}
        await until(lambda: {"n": 0} in replied("before"), "the reply before the restart")
        pub.close()
        broker.stop()
        await until(lambda: source.status(trigger.trigger_id)["Connected"] is False, "the disconnect")
        # The second invocation finishes while the broker is down: its reply is published then.
        intake.finished[intake.ids[1]] = {"Status": "succeeded", "Result": {"n": 1}}
        await until(lambda: intake.ids[1] in intake.answered, "the result read while the broker is down")
        assert source.status(trigger.trigger_id)["RepliesPending"] == 1
        broker.start()
        await until(lambda: {"n": 1} in replied("during"), "the reply held while the broker was down", timeout=90)
        # A message published after the restart is replied on the subscriber's resumed session.
        pub = Publisher(broker.port)
        pub.publish("ask/after", "q2")
        await until(lambda: len(intake.ids) == 3, "the event after the restart", timeout=90)
        intake.finished[intake.ids[2]] = {"Status": "succeeded", "Result": {"n": 2}}
        await until(lambda: {"n": 2} in replied("after"), "the reply after the restart", timeout=90)
        await until(lambda: source.status(trigger.trigger_id)["Replied"] == 3, "three replies taken by the broker")
        status = source.status(trigger.trigger_id)
        assert status["RepliesPending"] == 0 and status["Connected"] is True
        assert replies.connects >= 2  # the subscriber's own reconnect: the replies came on its resumed session
        # QoS 1 is at least once: a reply may come twice (DUP), never another invocation's result.
        assert {json.dumps(r) for r in replied("during")} == {json.dumps({"n": 1})}
    finally:
        pub.close()
        replies.close()
        await source.stop()


async def test_the_client_runs_on_the_event_loop_without_a_thread_of_its_own(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "loop/+")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        ours = f"paho-mqtt-client-{default_client_id(trigger.trigger_id)}"  # paho's name for its thread
        assert ours not in [t.name for t in threading.enumerate()]
        assert [t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-pub")]  # the check works
        pub.publish("loop/1", "x")
        await until(lambda: len(intake.events) == 1, "the event")
    finally:
        pub.close()
        await source.stop()


async def test_mqtts_messages_large_and_small_arrive_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over TLS, with a CA of the test's own trusted as a system bundle is (SSL_CERT_FILE), read by
    the event loop: messages of several TLS records, and many small ones back to back, each
    delivered within seconds (a read left waiting for more bytes on the wire would wait for the
    keepalive, 30 s later)."""
    ca = make_ca(tmp_path, "mqtt-ca")
    cert, key = tmp_path / "broker.pem", tmp_path / "broker.key"
    issue(ca, cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca[2]))
    server = Mosquitto(tmp_path, tls=(cert, key))
    server.start()
    intake = RecordingIntake()
    trigger = SourceTrigger(trigger_id=uuid.uuid4().hex, type="mqtt", function_brn="brn:cloud:faas:bj:x:function:f:$LATEST",
                            uid="acct", config={"Broker": server.tls_url, "Topic": "big/+", "Qos": 1})
    source = await started(intake, trigger)
    pub = Publisher(server.port)  # on the plain listener: the broker forwards over TLS
    try:
        bodies = [chr(ord("A") + n) * (100_000 + n) for n in range(3)]
        for n, body in enumerate(bodies):
            pub.publish(f"big/{n}", body)
        await until(lambda: len(intake.events) == 3, "three messages of several TLS records each", timeout=10)
        assert [e["payload"] for e in intake.events] == bodies
        # QoS 0 back to back: several messages in one TLS record, read one per readable socket.
        for n in range(100):
            pub.publish(f"big/small{n}", str(n), qos=0)
        await until(lambda: len(intake.events) == 103, "a hundred small messages over TLS", timeout=10)
        assert [e["payload"] for e in intake.events[3:]] == [str(n) for n in range(100)]
        assert source.status(trigger.trigger_id)["Connected"] is True
    finally:
        pub.close()
        await source.stop()
        server.stop()


async def test_removing_the_trigger_stops_its_subscription(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "gone")
    source = await started(intake, trigger)
    pub = Publisher(broker.port)
    try:
        await source.apply(TriggerChange.REMOVED, trigger)
        assert source.status(trigger.trigger_id) is None
        pub.publish("gone", "after")
        await asyncio.sleep(0.3)
        assert intake.events == []
    finally:
        pub.close()
        await source.stop()


async def test_a_reconnect_to_the_session_does_not_replay_retained_messages(broker: Mosquitto) -> None:
    intake = RecordingIntake()
    trigger = trigger_of(broker, "kept")
    pub = Publisher(broker.port)
    pub.publish("kept", "retained", qos=1)
    info = pub.client.publish("kept", "retained", qos=1, retain=True)
    info.wait_for_publish(10)
    source = await started(intake, trigger)
    try:
        await until(lambda: len(intake.events) == 1, "the retained message on subscribe")
        assert intake.events[0]["retain"] is True
        broker.stop()
        await until(lambda: source.status(trigger.trigger_id)["Connected"] is False, "the disconnect")
        broker.start()
        await until(lambda: source.status(trigger.trigger_id)["Connected"] is True, "the reconnect", timeout=40)
        pub.close()
        pub = Publisher(broker.port)
        pub.publish("kept", "live")
        await until(lambda: len(intake.events) == 2, "the live message")
        assert [e["payload"] for e in intake.events] == ["retained", "live"]
    finally:
        pub.close()
        await source.stop()

