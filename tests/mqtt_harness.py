"""MQTT clients for the event-source tests against a real broker (:class:`bench.mosquitto.Mosquitto`):
a QoS 1 :class:`Publisher` and a :class:`Subscriber` that collects what arrives."""

from __future__ import annotations

import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


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
    """Collects what arrives on a topic filter (replies).

    A persistent session (``clean_session=False``, a fixed client id) with a QoS 1 subscription:
    across a broker restart (Mosquitto keeps sessions in its persistence file) and while this
    client is reconnecting, the broker queues what matches, and hands it over on the reconnect.
    The subscription is made again on any connect that finds no session.
    """

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ready = False
        self.topic = topic
        self.connects = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub{uuid.uuid4().hex[:12]}",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *_a: setattr(self, "ready", True)
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, _userdata: object, flags: paho.ConnectFlags, reason: object,
                    _props: object) -> None:
        self.connects += 1
        if not flags.session_present:
            client.subscribe(self.topic, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
