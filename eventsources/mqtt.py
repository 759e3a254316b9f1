"""The ``mqtt`` event source: each message on a trigger's topic filter becomes an asynchronous
invocation with ``{"topic", "payload", "isBase64Encoded", "qos", "retain", "messageId",
"receivedAt"}`` (UTF-8 text as is, anything else base64).

The client is paho-mqtt 2.x with manual acknowledgement: a QoS 1 message is acknowledged (PUBACK)
only once its event is durable, and in the order messages arrived (MQTT-4.6.0-2), so a controller
that dies loses nothing: the session is persistent (``clean_session=False``, a stable client id),
and the broker sends what was never acknowledged again when the next controller connects. A
refused enqueue that may succeed later (queue full, store down) is tried again, the message held
unacknowledged meanwhile; one that never will (over the size limit, no such function) is counted
as rejected and acknowledged, and the connection goes on.

paho's network loop runs on the event loop (``eventsources/mqtt_link.py``), which also reconnects
with exponential back-off: paho's callbacks below run on the loop.

``ReplyTopic``: once an event's invocation has finished (its record, polled with back-off: the
queue has no completion hook and a poll keeps this source the queue's client only), the result is
published there with the trigger's QoS, on the trigger's own connection. A QoS 1 reply is paho's
until the broker's PUBACK: one published while the broker is away (a result that finished during a
broker restart) waits in the client's outgoing queue and goes out on the reconnect, as do replies
in flight when the connection dropped (sent again with DUP). ``Replied`` counts the replies the
broker took (PUBACK; QoS 0: written to the socket, and lost when there is none). Replies pending
when the trigger changes or the controller exits are not sent.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import json
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import structlog

from easyfaas.errors import OutboundRefused
from easyfaas.http import request_id_of
from easyfaas.outbound import OutboundGuard
from eventsources.mqtt_config import MQTT_TRIGGER_TYPE, MqttConfig, parse_mqtt_config, reply_topic_for
from eventsources.mqtt_link import LoopLink
from eventsources.source import ConfigError, Intake, Refused, SourceTrigger, Submitted, TriggerChange

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = structlog.get_logger(__name__)

KEEPALIVE = 30
RECONNECT_MIN = 0.5
RECONNECT_MAX = 30.0
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
REPLY_POLL = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
REPLY_GIVE_UP = 3600.0


def _iso_ms(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def message_event(topic: str, payload: bytes, qos: int, retain: bool, mid: int, received_at: float) -> dict[str, Any]:
    try:
        text, encoded = payload.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(payload).decode(), True
    return {"topic": topic, "payload": text, "isBase64Encoded": encoded, "qos": qos, "retain": retain,
            "messageId": mid, "receivedAt": _iso_ms(received_at)}


def default_client_id(trigger_id: str) -> str:
    """A stable client id within the 23 characters every broker must accept."""
    return "ef" + trigger_id.replace("-", "")[:21]


@dataclass
class _Pending:
    task: asyncio.Task[bool]  # True: acknowledge (durable, or rejected for good)
    mid: int
    qos: int
    generation: int  # the connection it came on: a PUBACK only makes sense on that one


class MqttSubscription:
    """One trigger's connection to its broker."""

    def __init__(self, trigger: SourceTrigger, config: MqttConfig, intake: Intake) -> None:
        self.trigger = trigger
        self.config = config
        self.intake = intake
        self.state = "connecting"
        self.connected = False
        self.last_message_at: float | None = None
        self.last_error = ""
        self.received = 0
        self.rejected = 0
        self.replied = 0  # replies the broker took
        self.replies_pending = 0  # invocations awaited, and replies published but not yet taken
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._link: LoopLink | None = None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._acker: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._subscribed = False  # by this object: a session left by an older config may lack it

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        # paho is imported when the first MQTT trigger starts, not with this module: the controller
        # imports this module whether or not the pod has an MQTT trigger.
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id or default_client_id(
            self.trigger.trigger_id), clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self._client = client
        self._acker = self._loop.create_task(self._acknowledge())
        self._link = LoopLink(client, cfg.host, cfg.port, KEEPALIVE, min_delay=RECONNECT_MIN,
                              max_delay=RECONNECT_MAX, on_connect_failed=self._connect_failed)
        self._link.start()
        log.info("mqtt_starting", trigger=self.trigger.trigger_id, broker=cfg.broker, topic=cfg.topic)

    async def stop(self) -> None:
        self._stopping = True
        for task in [*(p.task for p in self._pending), *self._replies, *([self._acker] if self._acker else [])]:
            task.cancel()
        await asyncio.gather(*(p.task for p in self._pending), *self._replies,
                             *([self._acker] if self._acker else []), return_exceptions=True)
        self._pending.clear()
        link, self._link, self._client = self._link, None, None
        if link is not None:
            # The session stays on the broker (clean_session=False): unacknowledged messages come
            # again to the next connection with this client id.
            await link.stop()
        self.state, self.connected = "stopped", False

    async def unsubscribe_and_stop(self) -> None:
        """The trigger is gone: drop the subscription from the broker's session, then stop."""
        client = self._client
        if client is not None and self.connected:
            client.unsubscribe(self.config.topic)
        await self.stop()

    def status(self) -> dict[str, Any]:
        return {"State": self.state, "Connected": self.connected,
                "LastMessageAt": _iso_ms(self.last_message_at) if self.last_message_at else None,
                "LastError": self.last_error or None, "Received": self.received, "Rejected": self.rejected,
                "Replied": self.replied, "RepliesPending": self.replies_pending}

    # ---- paho's callbacks (on the event loop) ----------------------------------------------------

    def _on_connect(self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._note("error", False, f"the broker refused the connection: {reason}")
            return
        if self._link is not None:
            self._link.connected()
        self._generation += 1
        session_present = bool(getattr(flags, "session_present", False))
        if not (session_present and self._subscribed):
            # Only when the broker does not hold the subscription already: a subscribe sends the
            # topic's retained messages again, and each reconnect would invoke them once more.
            client.subscribe(self.config.topic, qos=self.config.qos)
            self._subscribed = True
        self._note("connected", True, "")
        log.info("mqtt_connected", trigger=self.trigger.trigger_id, broker=self.config.broker,
                 session_present=session_present)

    def _on_subscribe(self, _client: paho.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any) -> None:
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            self._subscribed = False
            self._note("error", True, f"the broker refused the subscription to {self.config.topic}: "
                                      f"{', '.join(refused)}")

    def _connect_failed(self, error: str) -> None:
        self._note("error", False, error)

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._stopping:
            return
        self._disconnected(f"disconnected from {self.config.broker}: {reason}")

    def _on_publish(self, _client: paho.Client, _userdata: Any, _mid: int, _reason: Any, _props: Any) -> None:
        self._reply_taken()  # only replies are published on this client

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self._received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid, self._generation,
                       time.time())

    # ---- state ---------------------------------------------------------------------------------

    def _note(self, state: str, connected: bool, error: str) -> None:
        if self._stopping:
            return
        if error and error != self.last_error:
            log.warning("mqtt_connection_problem", trigger=self.trigger.trigger_id, broker=self.config.broker,
                        error=error)
        self.state, self.connected = state, connected
        if error or connected:
            self.last_error = error

    def _disconnected(self, detail: str) -> None:
        # A refused CONNACK is followed by a disconnect whose reason says less: the refusal stays.
        if self.state == "error":
            self._note("error", False, self.last_error)
        else:
            self._note("reconnecting", False, detail)

    def _reply_taken(self) -> None:
        self.replied += 1
        self.replies_pending = max(0, self.replies_pending - 1)

    def _received(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, generation: int,
                  received_at: float) -> None:
        if self._stopping or self._loop is None:
            return
        self.received += 1
        self.last_message_at = received_at
        event = message_event(topic, payload, qos, retain, mid, received_at)
        task = self._loop.create_task(self._enqueue(topic, event))
        self._pending.append(_Pending(task, mid, qos, generation))
        self._arrived.set()

    async def _enqueue(self, topic: str, event: dict[str, Any]) -> bool:
        request_id = request_id_of("")  # a new one, from the PRNG
        text = json.dumps(event, ensure_ascii=False)
        for attempt in range(1 << 30):
            try:
                result = await self.intake.submit(self.trigger, text, request_id)
            except Refused as exc:
                if not exc.retryable:
                    self.rejected += 1
                    self.last_error = f"message on {topic} rejected: {exc}"
                    log.warning("mqtt_message_rejected", trigger=self.trigger.trigger_id, topic=topic,
                                request_id=request_id, status=exc.status, code=exc.code, error=exc.message)
                    return True
                self.last_error = f"enqueue refused, retrying: {exc}"
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                continue
            log.info("mqtt_message_enqueued", trigger=self.trigger.trigger_id, topic=topic, request_id=request_id,
                     qos=event["qos"], result=result.value)
            if self.config.reply_topic and result is Submitted.ACCEPTED:
                reply_to = reply_topic_for(self.config.reply_topic, topic)
                if reply_to is not None and self._loop is not None:
                    task = self._loop.create_task(self._reply(request_id, reply_to))
                    self._replies.add(task)
                    task.add_done_callback(self._replies.discard)
            return True
        return False

    async def _acknowledge(self) -> None:
        """PUBACK each QoS 1 message once its enqueue is done, strictly in arrival order."""
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            head = self._pending[0]
            try:
                ack = await head.task
            except Exception as exc:  # noqa: BLE001 - held back: the broker sends it again on reconnect
                log.error("mqtt_enqueue_crashed", trigger=self.trigger.trigger_id, error=repr(exc))
                ack = False
            self._pending.popleft()
            client = self._client
            if ack and head.qos == 1 and client is not None and head.generation == self._generation:
                client.ack(head.mid, head.qos)

    async def _reply(self, request_id: str, topic: str) -> None:
        self.replies_pending += 1
        published = False
        try:
            record = await self._finished_record(request_id)
            if record is None:
                return
            if record.get("Status") == "succeeded":
                result = record.get("Result")
                payload = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
            else:
                payload = json.dumps({"requestId": request_id, "status": record.get("Status"),
                                      "error": record.get("Error")}, ensure_ascii=False)
            client = self._client
            if client is None:
                return
            # Connected or not: a QoS 1 message is queued by paho and sent after the reconnect.
            info = client.publish(topic, payload.encode(), qos=self.config.qos)
            published = self.config.qos == 1 or info.rc == 0
            log.info("mqtt_reply_published", trigger=self.trigger.trigger_id, request_id=request_id, topic=topic,
                     connected=self.connected)
        finally:
            if not published:
                self.replies_pending = max(0, self.replies_pending - 1)

    async def _finished_record(self, request_id: str) -> dict[str, Any] | None:
        """The invocation's record once it finished; None after REPLY_GIVE_UP."""
        started = time.monotonic()
        attempt = 0
        while time.monotonic() - started < REPLY_GIVE_UP:
            try:
                record = await self.intake.outcome(request_id)
            except Exception as exc:  # noqa: BLE001 - the queue's store is away for now: poll again
                log.warning("mqtt_reply_outcome_failed", trigger=self.trigger.trigger_id, request_id=request_id,
                            error=repr(exc))
                record = None
            if record is not None:
                return record
            await asyncio.sleep(REPLY_POLL[min(attempt, len(REPLY_POLL) - 1)])
            attempt += 1
        log.warning("mqtt_reply_given_up", trigger=self.trigger.trigger_id, request_id=request_id)
        return None


class MqttSource:
    """Every ``mqtt`` trigger's :class:`MqttSubscription`."""

    type = MQTT_TRIGGER_TYPE

    def __init__(self, intake: Intake, *, guard: OutboundGuard | None = None) -> None:
        self.intake = intake
        self.guard = guard if guard is not None and guard.enabled else None  # easyfaas/outbound.py
        self._subs: dict[str, MqttSubscription] = {}
        self._invalid: dict[str, str] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        subs, self._subs = self._subs, {}
        await asyncio.gather(*(s.stop() for s in subs.values()))

    async def apply(self, change: TriggerChange, trigger: SourceTrigger) -> None:
        old = self._subs.pop(trigger.trigger_id, None)
        self._invalid.pop(trigger.trigger_id, None)
        if change is not TriggerChange.REMOVED and old is not None and old.trigger == trigger:
            self._subs[trigger.trigger_id] = old
            return
        if old is not None:
            if change is TriggerChange.REMOVED or old.config.topic != trigger.config.get("Topic"):
                await old.unsubscribe_and_stop()
            else:
                await old.stop()
        if change is TriggerChange.REMOVED:
            log.info("mqtt_removed", trigger=trigger.trigger_id)
            return
        try:
            config = parse_mqtt_config(trigger.config)
        except ConfigError as exc:
            self._invalid[trigger.trigger_id] = str(exc)
            log.warning("mqtt_invalid", trigger=trigger.trigger_id, error=str(exc))
            return
        if self.guard is not None:
            try:
                addresses = await self.guard.resolve(config.host, config.port, "MQTT broker")
            except OutboundRefused as exc:
                self._invalid[trigger.trigger_id] = exc.cause
                log.warning("mqtt_refused", trigger=trigger.trigger_id, broker=config.broker, error=exc.cause)
                return
            if not config.tls:
                # Connect to the address that was checked (a name could resolve elsewhere next time);
                # over TLS the certificate is checked against the broker's name instead.
                config = dataclasses.replace(config, host=addresses[0])
        sub = MqttSubscription(trigger, config, self.intake)
        self._subs[trigger.trigger_id] = sub
        await sub.start()

    def status(self, trigger_id: str) -> dict[str, Any] | None:
        sub = self._subs.get(trigger_id)
        if sub is not None:
            return sub.status()
        if trigger_id in self._invalid:
            return {"State": "error", "Connected": False, "LastError": self._invalid[trigger_id]}
        return None
