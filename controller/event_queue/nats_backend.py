"""The shared event queue: NATS JetStream (``--event-queue nats://host:4222``), so that several pods
drain one queue.

* Events: stream ``EASYFAAS_EVENTS`` (work-queue retention, file storage), one subject per
  function (``easyfaas.events.<md5 of its unqualified BRN>``). The stream enforces the bounds:
  ``max_msgs`` in total and ``max_msgs_per_subject`` per function, both with discard-new, so an
  enqueue over them is refused by the server for every pod at once. Every pod pulls from one
  durable consumer: a message is leased to one pod until it is acked, nak'ed with a delay (a
  retry, or a throttle) or its ``ack_wait`` runs out (a pod died: the message is delivered again).
* Records: key-value bucket ``easyfaas-invocations`` (one key per request id, the bucket's TTL is
  the record retention), updated by compare-and-set; dead letters (record and event) in
  ``easyfaas-dead-letters``.
* Listing: the bucket ``easyfaas-invocation-index`` has an empty key per record and status,
  ``r.<account>.<function>.<status>.<enqueued µs>.<request id>``, and per dead letter,
  ``d.<account>.<function>.<finished µs>.<request id>`` (account and function as md5 tokens). A
  listing reads only the keys its filters name (a subject filter on the server, names without
  values), sorts them newest first and reads records until ``Limit`` match. A change puts the
  record's key before the record and deletes the old one after it, so a key whose record says
  otherwise is stale (a crash or a lost answer between the two) and is skipped: the record is
  the truth; stale keys go with the bucket's TTL.

Order of writes: the message is published first, then its record; a worker that gets a message
whose record is not there yet creates it. A message whose record says it finished is acked and
never run again. For the publish acknowledgement to mean "on disk", run nats-server with
``jetstream { sync_interval: always }``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, KeyValueConfig, RetentionPolicy,
                         StorageType, StreamConfig)
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from controller.event_queue.interface import (DeadLetter, Delivery, FunctionDepth, Outcome, QueueDepth, QueuedEvent,
                                              Room)
from easyfaas.errors import ResourceConflict
from easyfaas.event_invoke import EventQueueFull, EventStoreUnavailable, InvocationRecord, InvocationStatus

log = structlog.get_logger(__name__)

STREAM = "EASYFAAS_EVENTS"
SUBJECT_PREFIX = "easyfaas.events."
CONSUMER = "easyfaas-workers"
RECORDS_BUCKET = "easyfaas-invocations"
DEAD_LETTERS_BUCKET = "easyfaas-dead-letters"
INDEX_BUCKET = "easyfaas-invocation-index"
KEY_BATCH = 1024
KEY_READER_IDLE = 30.0  # s: a listing's consumer left behind (a lost connection) goes by itself
NO_ROOM_DELAY = 0.2


def subject_of(function: str) -> str:
    return SUBJECT_PREFIX + hashlib.md5(function.encode()).hexdigest()


def key_of(request_id: str) -> str:
    # Request ids are [A-Za-z0-9._:-]; KV keys do not take ':' but do take '=' (never in an id).
    return request_id.replace(":", "=")


def _token(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _micros(epoch: float | None) -> str:
    return f"{round((epoch or 0.0) * 1e6):017d}"  # fixed width: sorts as text


def record_index_key(rec: dict[str, Any]) -> str:
    """The listing key of a record in its current status."""
    return (f"r.{_token(rec['Account'])}.{_token(rec['Function'])}.{rec['Status']}.{_micros(rec['EnqueuedAt'])}."
            f"{key_of(rec['RequestId'])}")


def dead_letter_index_key(rec: dict[str, Any]) -> str:
    return (f"d.{_token(rec['Account'])}.{_token(rec['Function'])}.{_micros(rec.get('FinishedAt'))}."
            f"{key_of(rec['RequestId'])}")


class NatsEventQueue:
    """The :class:`~controller.event_queue.interface.EventQueue` on NATS JetStream."""

    def __init__(self, url: str, *, max_queued_per_function: int = 10000, max_queued: int = 100000,
                 record_ttl: float = 86400.0, max_records_bytes: int = -1, ack_wait: float = 30.0,
                 max_deliver: int = 1000, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.max_queued_per_function = max_queued_per_function
        self.max_queued = max_queued
        self.record_ttl = record_ttl
        self.max_records_bytes = max_records_bytes
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.connect_timeout = connect_timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._records: KeyValue | None = None
        self._dead: KeyValue | None = None
        self._index: KeyValue | None = None
        self._names: dict[str, str] = {}  # subject → function, for the depth report

    # ---- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._nc = await nats.connect(self.url, connect_timeout=self.connect_timeout, max_reconnect_attempts=-1,
                                          reconnect_time_wait=0.5, allow_reconnect=True, name="easyfaas-controller")
        except Exception as exc:  # noqa: BLE001 - nats-py raises several unrelated types here
            raise SystemExit(f"easyfaas-controller: cannot reach the event queue at {self.url}: {exc}") from None
        self._js = self._nc.jetstream(timeout=self.connect_timeout)
        config = StreamConfig(name=STREAM, subjects=[SUBJECT_PREFIX + ">"], retention=RetentionPolicy.WORK_QUEUE,
                              storage=StorageType.FILE, max_msgs=self.max_queued,
                              max_msgs_per_subject=self.max_queued_per_function, discard=DiscardPolicy.NEW,
                              discard_new_per_subject=True, duplicate_window=120.0)
        try:
            await self._js.stream_info(STREAM)
            await self._js.update_stream(config)
        except NotFoundError:
            await self._js.add_stream(config)
        consumer = ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
                                  max_deliver=self.max_deliver, deliver_policy=DeliverPolicy.ALL,
                                  filter_subject=SUBJECT_PREFIX + ">", max_ack_pending=-1)
        self._sub = await self._js.pull_subscribe(SUBJECT_PREFIX + ">", durable=CONSUMER, stream=STREAM,
                                                  config=consumer)
        self._records = await self._bucket(KeyValueConfig(
            bucket=RECORDS_BUCKET, ttl=self.record_ttl, history=1, storage=StorageType.FILE,
            max_bytes=self.max_records_bytes))
        self._dead = await self._bucket(KeyValueConfig(
            bucket=DEAD_LETTERS_BUCKET, ttl=self.record_ttl, history=1, storage=StorageType.FILE))
        self._index = await self._bucket(KeyValueConfig(
            bucket=INDEX_BUCKET, ttl=self.record_ttl, history=1, storage=StorageType.FILE))
        await self._index_existing()
        log.info("event_queue_opened", backend="nats", url=self.url)

    async def _index_existing(self) -> None:
        """Records and dead letters kept before the index bucket existed get their keys, once."""
        js, records, dead = self._ready()
        if (await js.stream_info(f"KV_{INDEX_BUCKET}")).state.messages:
            return
        count = 0
        for name, bucket, key_of_item in ((RECORDS_BUCKET, records, record_index_key),
                                          (DEAD_LETTERS_BUCKET, dead,
                                           lambda item: dead_letter_index_key(item["Record"]))):
            for item in await self._all(name, bucket):
                await self._put_index(key_of_item(item))
                count += 1
        if count:
            log.info("event_index_built", keys=count)

    async def _bucket(self, config: KeyValueConfig) -> KeyValue:
        assert self._js is not None
        try:
            return await self._js.create_key_value(config)
        except BadRequestError:
            # It exists with other settings (another pod's --event-record-ttl): use it as it is.
            log.warning("event_bucket_settings_differ", bucket=config.bucket)
            return await self._js.key_value(config.bucket)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            # Not drain(): every write here already waited for its acknowledgement, and a drain
            # waits out the pending pull request's expiry.
            await nc.close()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _ready(self) -> tuple[JetStreamContext, KeyValue, KeyValue]:
        if self._js is None or self._records is None or self._dead is None:
            raise EventStoreUnavailable("the event queue is not open")
        return self._js, self._records, self._dead

    # ---- the listing index ---------------------------------------------------------------------

    async def _put_index(self, key: str) -> None:
        if self._index is None:
            raise EventStoreUnavailable("the event queue is not open")
        await self._index.put(key, b"")

    async def _drop_index(self, key: str) -> None:
        if self._index is None:
            return
        try:
            await self._index.delete(key)
        except Exception as exc:  # noqa: BLE001 - a stale key is skipped by listings and goes with the TTL
            log.warning("event_index_delete_failed", key=key, error=str(exc) or type(exc).__name__)

    async def _index_keys(self, pattern: str) -> list[str]:
        """The live keys of the index matching ``pattern`` (filtered by the server, names only)."""
        return await self._live_keys(INDEX_BUCKET, pattern)

    async def _live_keys(self, bucket: str, pattern: str) -> list[str]:
        """The keys of ``bucket`` matching ``pattern`` that hold a value (not deleted).

        Read through an ephemeral pull consumer, not ``KeyValue.watch`` (nor ``keys()``, a watch):
        the watch decides there is nothing to come from a consumer info that can overtake the
        deliveries on the wire (a full bucket then lists as empty; seen under CPU load). A pull
        consumer delivers only when asked, and each message says how many are still pending, so
        the end is exact.
        """
        js = self._js
        if js is None:
            raise EventStoreUnavailable("the event queue is not open")
        stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
        info = await js.add_consumer(stream, ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE, headers_only=True,
            filter_subject=prefix + pattern, mem_storage=True, num_replicas=1, inactive_threshold=KEY_READER_IDLE))
        keys: list[str] = []
        try:
            pending = info.num_pending
            if not pending:
                return keys
            sub = await js.pull_subscribe_bind(info.name, stream)
            try:
                while pending:
                    try:
                        msgs = await sub.fetch(min(pending, KEY_BATCH), timeout=self.connect_timeout)
                    except (TimeoutError, nats.errors.TimeoutError):
                        msgs = []
                    if not msgs:
                        raise EventStoreUnavailable(f"the event queue did not answer a listing of {bucket}")
                    for msg in msgs:
                        pending = msg.metadata.num_pending
                        if not _is_deletion(msg):
                            keys.append(msg.subject[len(prefix):])
            finally:
                await sub.unsubscribe()
        finally:
            await self._drop_reader(stream, info.name)
        return keys

    async def _drop_reader(self, stream: str, name: str) -> None:
        if self._js is None:
            return
        try:
            await self._js.delete_consumer(stream, name)
        except Exception as exc:  # noqa: BLE001 - its inactive_threshold removes it anyway
            log.warning("event_key_reader_not_deleted", consumer=name, error=str(exc) or type(exc).__name__)

    # ---- records -------------------------------------------------------------------------------

    async def _get(self, request_id: str) -> tuple[dict[str, Any] | None, int | None]:
        _, records, _ = self._ready()
        try:
            entry = await records.get(key_of(request_id))
        except KeyNotFoundError:
            return None, None
        if entry.value is None or not entry.value:
            return None, entry.revision
        return json.loads(entry.value), entry.revision

    async def _modify(self, request_id: str,
                      change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Compare-and-set the record: ``change`` sees the current one (None if absent)."""
        _, records, _ = self._ready()
        for _ in range(20):
            current, revision = await self._get(request_id)
            new = change(current)
            if new is None:
                return current
            new_key = record_index_key(new)
            # The key goes first, so that a listing never misses the record; it is put even when
            # unchanged, so a change whose outcome was lost (a restarting server) puts it back.
            await self._put_index(new_key)
            data = json.dumps(new, ensure_ascii=False).encode()
            try:
                if revision is None:
                    await records.create(key_of(request_id), data)
                else:
                    await records.update(key_of(request_id), data, last=revision)
            except (KeyWrongLastSequenceError, BadRequestError):
                continue  # somebody else changed it in between: read it again (a stale key stays)
            old_key = record_index_key(current) if current is not None else None
            if old_key is not None and old_key != new_key:
                await self._drop_index(old_key)
            return new
        raise EventStoreUnavailable(f"the record of {request_id} keeps changing under us")

    # ---- the queue -----------------------------------------------------------------------------

    async def enqueue(self, event: QueuedEvent) -> InvocationRecord:
        js, records, _ = self._ready()
        subject = subject_of(event.function)
        self._names[subject] = event.function
        try:
            ack = await js.publish(subject, json.dumps(event.to_dict(), ensure_ascii=False).encode(),
                                   stream=STREAM, headers={"Nats-Msg-Id": event.request_id})
        except nats.js.errors.APIError as exc:
            text = str(exc.description or exc)
            if "maximum messages" in text:
                raise EventQueueFull(f"too many queued asynchronous invocations of {event.function}: {text}") from None
            raise EventStoreUnavailable(f"the event queue refused the event: {text}") from None
        except Exception as exc:  # noqa: BLE001 - timeouts, lost connection
            raise EventStoreUnavailable(f"the event queue at {self.url} did not store the event: "
                                        f"{exc or type(exc).__name__}") from None
        if ack.duplicate:
            raise ResourceConflict(f"request id {event.request_id} was already accepted")
        record = _new_record(event)
        try:
            await self._modify(event.request_id, lambda cur: record if cur is None else None)
        except Exception as exc:  # noqa: BLE001 - the event is published: take it back if we can
            try:
                await js.delete_msg(STREAM, ack.seq)
            except Exception:  # noqa: BLE001 - a worker will create the record when it runs the event
                log.warning("event_record_missing", request_id=event.request_id, error=str(exc))
            raise EventStoreUnavailable(f"the event queue did not store the record: {exc}") from None
        return _record_of(record)

    async def lease(self, max_count: int, room: Room, wait: float) -> list[Delivery]:
        if self._sub is None:
            raise EventStoreUnavailable("the event queue is not open")
        try:
            msgs = await self._sub.fetch(max_count, timeout=max(wait, 0.05))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        taken: dict[str, int] = {}
        leased: list[Delivery] = []
        for msg in msgs:
            try:
                event = QueuedEvent.from_dict(json.loads(msg.data))
            except (ValueError, KeyError, TypeError):
                log.error("event_malformed", subject=msg.subject)
                await msg.term()
                continue
            if taken.get(event.function, 0) >= room(event.function):
                await msg.nak(delay=NO_ROOM_DELAY)
                continue
            now = time.time()

            def start(cur: dict[str, Any] | None, event: QueuedEvent = event, now: float = now) -> dict[str, Any] | None:
                rec = cur if cur is not None else _new_record(event)
                if InvocationStatus(rec["Status"]).finished:
                    return None
                return {**rec, "Status": InvocationStatus.RUNNING.value, "Attempts": rec["Attempts"] + 1,
                        "StartedAt": now}

            rec = await self._modify(event.request_id, start)
            if rec is None or InvocationStatus(rec["Status"]).finished:
                await msg.ack()  # finished before (its ack was lost): never run again
                continue
            taken[event.function] = taken.get(event.function, 0) + 1
            leased.append(Delivery(event, rec["Attempts"], msg))
        return leased

    lease_expires = True  # after the consumer's ack_wait without news

    async def touch(self, delivery: Delivery) -> None:
        msg: Msg = delivery.token
        await msg.in_progress()

    async def finish(self, delivery: Delivery, outcome: Outcome) -> None:
        if not outcome.status.finished:
            raise ValueError(f"finish needs a final status, not {outcome.status.value}")
        _, _, dead = self._ready()
        now = time.time()
        rec = await self._modify(delivery.event.request_id, lambda cur: {
            **(cur or _new_record(delivery.event)), "Status": outcome.status.value, "FinishedAt": now,
            "Result": outcome.result, "Error": outcome.error, "LogResult": outcome.log_result,
            "DeadLetter": outcome.status is not InvocationStatus.SUCCEEDED})
        if outcome.status is not InvocationStatus.SUCCEEDED and rec is not None:
            await self._put_index(dead_letter_index_key(rec))
            await dead.put(key_of(delivery.event.request_id),
                           json.dumps({"Record": rec, "Event": delivery.event.to_dict()}, ensure_ascii=False).encode())
        msg: Msg = delivery.token
        await msg.ack_sync()

    async def retry(self, delivery: Delivery, delay: float, outcome: Outcome) -> None:
        await self._modify(delivery.event.request_id, lambda cur: {
            **(cur or _new_record(delivery.event)), "Status": InvocationStatus.QUEUED.value,
            "Error": outcome.error, "LogResult": outcome.log_result})
        msg: Msg = delivery.token
        await msg.nak(delay=delay)

    async def requeue(self, delivery: Delivery, delay: float) -> None:
        await self._modify(delivery.event.request_id, lambda cur: {
            **(cur or _new_record(delivery.event)), "Status": InvocationStatus.QUEUED.value,
            "Attempts": max(0, (cur or {}).get("Attempts", 1) - 1)})
        msg: Msg = delivery.token
        await msg.nak(delay=delay)

    # ---- records and dead letters --------------------------------------------------------------

    async def record(self, request_id: str) -> InvocationRecord | None:
        rec, _ = await self._get(request_id)
        return _record_of(rec) if rec is not None else None

    async def _all(self, name: str, bucket: KeyValue) -> list[dict[str, Any]]:
        found = []
        for key in await self._live_keys(name, ">"):
            try:
                entry = await bucket.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                found.append(json.loads(entry.value))
        return found

    async def records(self, *, account: str, function: str | None = None,
                      status: InvocationStatus | None = None, limit: int = 50) -> list[InvocationRecord]:
        pattern = (f"r.{_token(account)}.{_token(function) if function else '*'}."
                   f"{status.value if status else '*'}.>")

        def fresh(key: str, rec: dict[str, Any] | None) -> bool:
            return (rec is not None and rec["Account"] == account and record_index_key(rec) == key
                    and (function is None or rec["Function"] == function)
                    and (status is None or rec["Status"] == status.value))

        async def read(request_id: str) -> dict[str, Any] | None:
            return (await self._get(request_id))[0]

        found = await self._newest(pattern, 4, read, fresh, limit)
        return [_record_of(rec) for rec in found]

    async def dead_letters(self, *, account: str, function: str | None = None,
                           limit: int = 50) -> list[DeadLetter]:
        pattern = f"d.{_token(account)}.{_token(function) if function else '*'}.>"

        def fresh(key: str, item: dict[str, Any] | None) -> bool:
            return (item is not None and item["Record"]["Account"] == account
                    and dead_letter_index_key(item["Record"]) == key
                    and (function is None or item["Record"]["Function"] == function))

        found = await self._newest(pattern, 3, self._dead_item, fresh, limit)
        return [DeadLetter(_record_of(i["Record"]), QueuedEvent.from_dict(i["Event"])) for i in found]

    async def _newest(self, pattern: str, time_at: int, read: Callable[[str], Any],
                      fresh: Callable[[str, Any], bool], limit: int) -> list[Any]:
        """Up to ``limit`` items behind the index keys matching ``pattern``, newest first.

        ``time_at`` is the position of the time token in the key, the request id follows it.
        Items are read a batch at a time, as many as are still missing: a stale key only costs its
        read.
        """
        keyed = []
        for key in await self._index_keys(pattern):
            parts = key.split(".", time_at + 1)
            if len(parts) == time_at + 2:
                keyed.append((parts[time_at], parts[time_at + 1].replace("=", ":"), key))
        keyed.sort(reverse=True)
        found: list[Any] = []
        at = 0
        while at < len(keyed) and len(found) < limit:
            batch = keyed[at:at + limit - len(found)]
            at += len(batch)
            items = await asyncio.gather(*(read(request_id) for _, request_id, _ in batch))
            found.extend(item for (_, _, key), item in zip(batch, items) if fresh(key, item))
        return found[:limit]

    async def _dead_item(self, request_id: str) -> dict[str, Any] | None:
        _, _, dead = self._ready()
        try:
            entry = await dead.get(key_of(request_id))
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    async def dead_letter(self, request_id: str) -> DeadLetter | None:
        item = await self._dead_item(request_id)
        if item is None:
            return None
        return DeadLetter(_record_of(item["Record"]), QueuedEvent.from_dict(item["Event"]))

    async def redrive(self, request_id: str) -> InvocationRecord | None:
        js, _, dead = self._ready()
        item = await self._dead_item(request_id)
        if item is None:
            return None
        letter = QueuedEvent.from_dict(item["Event"])
        now = time.time()
        event = QueuedEvent(letter.request_id, letter.function, letter.function_arn, letter.account, letter.payload,
                            now, letter.callback_url, letter.traceparent)
        fresh = _new_record(event)
        await self._modify(request_id, lambda cur: fresh)
        try:
            await js.publish(subject_of(event.function), json.dumps(event.to_dict(), ensure_ascii=False).encode(),
                             stream=STREAM, headers={"Nats-Msg-Id": f"{request_id}/redrive/{now:.6f}"})
        except nats.js.errors.APIError as exc:
            raise EventQueueFull(f"the event queue refused the redrive: {exc.description or exc}") from None
        await dead.delete(key_of(request_id))
        await self._drop_index(dead_letter_index_key(item["Record"]))
        return _record_of(fresh)

    async def delete_dead_letter(self, request_id: str) -> bool:
        _, _, dead = self._ready()
        item = await self._dead_item(request_id)
        if item is None:
            return False
        await dead.delete(key_of(request_id))
        await self._drop_index(dead_letter_index_key(item["Record"]))
        return True

    async def note_callback(self, request_id: str, outcome: dict[str, Any]) -> None:
        await self._modify(request_id, lambda cur: None if cur is None else {**cur, "Callback": outcome})

    async def depth(self) -> QueueDepth:
        js, _, _ = self._ready()
        info = await js.stream_info(STREAM, subjects_filter=SUBJECT_PREFIX + ">")
        counts = info.state.subjects or {}
        for subject in counts:
            if subject not in self._names:
                await self._learn_name(js, subject)
        functions = {self._names.get(subject, subject): FunctionDepth(count, 0.0) for subject, count in counts.items()}
        return QueueDepth(info.state.messages, functions)

    async def _learn_name(self, js: JetStreamContext, subject: str) -> None:
        """The function of a subject this controller never enqueued to (another pod did, or a
        predecessor): a subject is a hash, its messages say the name."""
        try:
            msg = await js.get_last_msg(STREAM, subject)
            self._names[subject] = QueuedEvent.from_dict(json.loads(msg.data or b"")).function
        except Exception as exc:  # noqa: BLE001 - drained meanwhile, or not an event: the subject stands
            log.debug("event_subject_unnamed", subject=subject, error=str(exc) or type(exc).__name__)

    async def prune(self) -> int:
        return 0  # the buckets' TTL drops records on the server


def _is_deletion(msg: Msg) -> bool:
    """A key-value delete or purge marker (by the client, or by the server's TTL: nats-server 2.11+)."""
    headers = msg.headers or {}
    return headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers


def _new_record(event: QueuedEvent) -> dict[str, Any]:
    record = {"RequestId": event.request_id, "Function": event.function, "FunctionArn": event.function_arn,
              "Account": event.account, "Status": InvocationStatus.QUEUED.value, "Attempts": 0,
              "EnqueuedAt": event.enqueued_at, "StartedAt": None, "FinishedAt": None, "Result": None,
              "Error": None, "LogResult": None, "DeadLetter": False}
    if event.traceparent:
        record["Traceparent"] = event.traceparent
    return record


def _record_of(rec: dict[str, Any]) -> InvocationRecord:
    return InvocationRecord(RequestId=rec["RequestId"], FunctionArn=rec["FunctionArn"], Account=rec["Account"],
                            Status=InvocationStatus(rec["Status"]), Attempts=rec["Attempts"],
                            EnqueuedAt=rec["EnqueuedAt"], StartedAt=rec.get("StartedAt"),
                            FinishedAt=rec.get("FinishedAt"), Result=rec.get("Result"), Error=rec.get("Error"),
                            LogResult=rec.get("LogResult"), DeadLetter=bool(rec.get("DeadLetter")),
                            Extra={key: rec[key] for key in ("Callback", "Traceparent") if rec.get(key)})

