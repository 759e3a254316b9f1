"""The mqtt event source against a real Mosquitto broker on a loopback port (its own config,
persistence in a temporary directory), with an in-process intake that records what it is given
(the controller's durable intake is exercised end to end in tests/test_event_sources_e2e.py).

Covered: the event's shape (text and binary payloads), the PUBACK only after the enqueue returned
(a source stopped while an enqueue is held gets the message again in its next session), retries of
a retryable refusal, rejection of an event the intake will never take (the connection goes on),
a broker that is down or refuses the credentials (State/LastError, then recovery), a broker
restarted mid-stream (no QoS 1 message lost), and replies on the ReplyTopic.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from eventsources.mqtt import MqttSource, message_event
from eventsources.mqtt_config import check_topic_filter, parse_mqtt_config, reply_topic_for
from eventsources.source import ConfigError, Refused, SourceTrigger, Submitted, TriggerChange

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto (make install)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto on 127.0.0.1 with persistence in ``directory``; restartable on its port."""

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = directory / "mosquitto.conf"
        # user root: the test runs as root and the files are in its temporary directory.
        lines = [f"listener {self.port} 127.0.0.1", "user root", "persistence true", f"persistence_location {directory}/",
                 "autosave_interval 1", "max_queued_messages 10000", "max_inflight_messages 100",
                 f"log_dest file {directory}/mosquitto.log"]
        if users:
            passwd = directory / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            passwd.chmod(0o600)
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()[-2000:]}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Publisher:
    """A QoS 1 publisher that waits for each PUBACK (the message is then the broker's)."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub{uuid.uuid4().hex[:12]}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        assert info.is_published(), f"the broker did not take the message on {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """Collects what arrives on a topic filter (replies)."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ready = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub{uuid.uuid4().hex[:12]}")
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *_a: setattr(self, "ready", True)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RecordingIntake:
    """Takes every event (keeps it in order); can hold enqueues or refuse them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.hold: asyncio.Event | None = None
        self.refuse: Refused | None = None
        self.refusals = 0
        self.finished: dict[str, dict[str, Any]] = {}

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
        return self.finished.get(request_id)


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

